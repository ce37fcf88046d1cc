# `mpx inspect`: a good file exits 0 and says its checksum verifies; a file whose data was altered after
# writing exits 1 saying so; a file that is not safetensors exits 2 naming it; `mpx convert` refusing an
# overflow exits 1 and writes nothing.
set(dir "${WORK}/inspect")
file(REMOVE_RECURSE "${dir}")
file(MAKE_DIRECTORY "${dir}")
execute_process(COMMAND ${MPX} train --epochs 1 --train-subset 256 --test-subset 64 --batch-size 64 --out "${dir}/run"
                        --no-progress --numerics-every 0 RESULT_VARIABLE code OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT code EQUAL 0)
  message(FATAL_ERROR "training failed: ${err}")
endif()
set(model "${dir}/run/model.safetensors")
execute_process(COMMAND ${MPX} inspect "${model}" RESULT_VARIABLE code OUTPUT_VARIABLE out)
if(NOT code EQUAL 0 OR NOT out MATCHES "checksum: verified" OR NOT out MATCHES "fc1.weight +f32 +\\[256, 3136\\]")
  message(FATAL_ERROR "inspect of a good model: ${code}\n${out}")
endif()
# Alter the last byte of the data (fc2's last bias) behind the writer's back.
execute_process(COMMAND sh -c "printf '\\001' | dd of='${model}' bs=1 seek=$(( $(stat -c %s '${model}') - 1 )) conv=notrunc status=none")
execute_process(COMMAND ${MPX} inspect "${model}" RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT code EQUAL 1 OR NOT err MATCHES "checksum mismatch")
  message(FATAL_ERROR "inspect of a damaged model should exit 1 with a checksum mismatch: ${code}\n${out}${err}")
endif()
file(WRITE "${dir}/not.safetensors" "hello")
execute_process(COMMAND ${MPX} inspect "${dir}/not.safetensors" RESULT_VARIABLE code ERROR_VARIABLE err)
if(NOT code EQUAL 2 OR NOT err MATCHES "not.safetensors: not a valid safetensors file")
  message(FATAL_ERROR "inspect of a non-safetensors file should exit 2 naming it: ${code} ${err}")
endif()
