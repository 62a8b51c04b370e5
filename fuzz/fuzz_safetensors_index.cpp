// libFuzzer target for sharded safetensors checkpoints: arbitrary bytes as
// model.safetensors.index.json in a folder that also holds two valid shards (a.safetensors:
// tensors x and y; b.safetensors: tensor z). Opening must end in a checkpoint or mil::Error (no
// file outside the folder may be read); a checkpoint that opens must hold exactly the tensors of
// the shards its index names, each found by name, none twice.
//   build: cmake -DMIL_BUILD_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ..  (target mil_fuzz_safetensors_index)
//   run:   ./mil_fuzz_safetensors_index -max_total_time=120 /tmp/index_corpus fuzz/corpus/safetensors_index
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <mil/io/safetensors.hpp>
#include <mil/io/safetensors_writer.hpp>

#include "fuzz_support.hpp"

namespace {

using mil::fuzz::require;

// The folder with the two shards, written once.
const mil::fuzz::ScratchFolder& folder() {
  using namespace mil::io;
  static const mil::fuzz::ScratchFolder dir("safetensors_index");
  static const bool written = [] {
    static const float values[6] = {1, 2, 3, 4, 5, 6};
    const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(values), sizeof values);
    auto shard = [](const std::vector<SafetensorsEntry>& entries) {
      const auto b = serialize_safetensors(entries, {{"format", "pt"}});
      return std::string(b.begin(), b.end());
    };
    dir.write("a.safetensors", shard({{"x", SafetensorsDtype::F32, {2, 3}, bytes},
                                      {"y", SafetensorsDtype::F32, {2}, bytes.subspan(0, 8)}}));
    dir.write("b.safetensors", shard({{"z", SafetensorsDtype::F32, {3}, bytes.subspan(8, 12)}}));
    return true;
  }();
  (void)written;
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mil::io;
  const auto& dir = folder();
  dir.write(SafetensorsCheckpoint::kIndexName,
            std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const auto ck = SafetensorsCheckpoint::open(dir.path());
    std::set<std::string> names;
    for (const auto& t : ck.tensors()) {
      require(names.insert(t.name).second, "a tensor listed twice");
      require(ck.find(t.name) == &t, "lookup by name");
    }
    const std::set<std::string> a = {"x", "y"}, b = {"z"}, ab = {"x", "y", "z"};
    require(names == a || names == b || names == ab, "tensors other than those of the shards");
    require(ck.files().size() == (names == ab ? 2u : 1u), "shard count");
  } catch (const mil::Error&) {
  }
  return 0;
}
