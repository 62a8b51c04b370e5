#pragma once
// Whether this test build runs under AddressSanitizer (the asan preset, with UBSan), where the
// suite's code is slower: long runs are skipped or shortened there and run in full in Release.
namespace mil::test {

inline constexpr bool kSanitizedBuild =
#if defined(__SANITIZE_ADDRESS__)
    true;
#else
    false;
#endif

}  // namespace mil::test
