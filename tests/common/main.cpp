// The doctest main of the CPU test program (the GPU one has its own: gpu_main.cpp).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
