// Error types of mpx. Library code throws these; only the CLI turns them into exit codes.
// Each message should tell the user what went wrong and what to do about it.
#pragma once

#include <stdexcept>
#include <string>

namespace mpx {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed something invalid: wrong length, null pointer, unknown name, out-of-range value.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A capability the build or the machine lacks (CUDA not built, no device, missing instruction set).
class NotAvailable : public Error {
 public:
  using Error::Error;
};

// A call into CUDA, cuBLASLt or the driver failed.
class CudaError : public Error {
 public:
  using Error::Error;
};

// A device allocation did not fit; the message gives the size asked for and what is free and cached.
class OutOfMemory : public CudaError {
 public:
  using CudaError::CudaError;
};

// Reading or writing a file failed, or a file is malformed.
class IoError : public Error {
 public:
  using Error::Error;
};

}  // namespace mpx

// Throws mpx::InvalidArgument naming the failed condition and its place when `cond` is false.
#define MPX_REQUIRE(cond, message)                                                          \
  do {                                                                                      \
    if (!(cond)) throw ::mpx::InvalidArgument(std::string(message));                         \
  } while (0)
