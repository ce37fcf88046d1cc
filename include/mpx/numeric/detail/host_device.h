// Lets the small numeric helpers compile both for the host and, inside .cu files, for the device.
#pragma once

#if defined(__CUDACC__)
#define MPX_HOST_DEVICE __host__ __device__
#else
#define MPX_HOST_DEVICE
#endif
