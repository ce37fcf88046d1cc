# Sourced by the data-parallel CLI tests: exit 77 (skipped) without the data set or mpirun, and let
# OpenMPI run as root and start more ranks than this machine has cores.
[ -d /usr/share/datasets/fashion-mnist ] || { echo "Fashion-MNIST not installed"; exit 77; }
command -v mpirun > /dev/null || { echo "mpirun not installed (openmpi-bin)"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
