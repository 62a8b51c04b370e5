// libFuzzer target for the safetensors reader: parse arbitrary bytes, then use whatever parsed
// (lookups, float conversion) and write it back: the re-serialised file must parse to the same
// tensors and metadata. Any input must end in success or mil::Error; ASan/UBSan report the rest.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_safetensors)
//   run:   ./mil_fuzz_safetensors -runs=1000000 /tmp/safetensors_corpus fuzz/corpus/safetensors
//          (libFuzzer writes new inputs into the first folder; keep the committed seeds small)
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include <mil/io/safetensors.hpp>
#include <mil/io/safetensors_writer.hpp>

#include "fuzz_support.hpp"

using mil::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil::io;
  try {
    auto f = SafetensorsFile::from_bytes(std::span<const uint8_t>(data, size), "fuzz");
    std::vector<SafetensorsEntry> entries;
    for (const auto& t : f.tensors()) {
      require(f.find(t.name) == &t, "lookup by name");
      require(int64_t(t.data.size()) == t.numel() * safetensors_dtype_size(t.dtype),
              "byte size");
      const bool is_float = t.dtype == SafetensorsDtype::F32 || t.dtype == SafetensorsDtype::F16 ||
                            t.dtype == SafetensorsDtype::BF16 || t.dtype == SafetensorsDtype::F64;
      try {
        auto v = to_float(t);  // numel is bounded by the input's bytes
        require(is_float && v.size() == size_t(t.numel()), "to_float of a float type");
      } catch (const mil::Error&) {
        require(!is_float, "to_float failed on a float type");
      }
      entries.push_back({t.name, t.dtype, t.shape, t.data});
    }
    require(f.find("\x01 no such tensor") == nullptr, "absent name");
    // Round trip through the writer.
    auto again = SafetensorsFile::from_bytes(serialize_safetensors(entries, f.metadata()));
    require(again.metadata() == f.metadata(), "metadata round trip");
    require(again.tensors().size() == f.tensors().size(), "tensor count round trip");
    for (const auto& t : f.tensors()) {
      const SafetensorsTensor* u = again.find(t.name);
      require(u && u->dtype == t.dtype && u->shape == t.shape &&
                  std::equal(u->data.begin(), u->data.end(), t.data.begin(), t.data.end()),
              "tensor round trip");
    }
  } catch (const mil::Error&) {
  }
  return 0;
}
