// libFuzzer target for the GGUF reader: parse arbitrary bytes, then use whatever parsed (typed
// metadata accessors, tensor dequantisation, the Llama configuration). Any input must end in
// success or mil::Error; ASan/UBSan report everything else.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_gguf)
//   run:   ./mil_fuzz_gguf -runs=1000000 /tmp/gguf_corpus fuzz/corpus/gguf
//          (libFuzzer writes new inputs into the first folder; keep the committed seeds small)
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <mil/nn/llama_gguf.hpp>

namespace {

template <class F>
void ignore_errors(F&& f) {
  try {
    f();
  } catch (const mil::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil;
  ignore_errors([&] {
    auto f = io::GgufFile::from_bytes(std::span<const uint8_t>(data, size), "fuzz");
    for (const auto& key : f.keys()) {
      ignore_errors([&] { (void)f.get_u32(key); });
      ignore_errors([&] { (void)f.get_i64(key); });
      ignore_errors([&] { (void)f.get_f32(key); });
      ignore_errors([&] { (void)f.get_bool(key); });
      ignore_errors([&] { (void)f.get_string(key); });
      ignore_errors([&] { (void)f.array_size(key); });
      ignore_errors([&] { (void)f.get_string_array(key); });
      ignore_errors([&] { (void)f.get_i64_array(key); });
      ignore_errors([&] { (void)f.get_f32_array(key); });
    }
    for (const auto& t : f.tensors()) {
      if (t.numel() > (1 << 20)) continue;  // keep each run fast; sizes were validated anyway
      ignore_errors([&] {
        std::vector<float> out(size_t(t.numel()));
        io::dequantize_row(t.type, t.data, out.data(), t.numel());
        if (t.rows() > 1) io::dequantize_rows(t, t.rows() - 1, 1, out.data());
      });
    }
    ignore_errors([&] { (void)nn::llama_config_from_gguf(f); });
  });
  return 0;
}
