// SHA-256 against the FIPS 180-4 / NIST example vectors, streaming in pieces of every size, and the
// model hash of a file or a folder.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <mil/util/sha256.hpp>

#include "common/error_of.hpp"

using namespace mil;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / ("mil_test_sha256_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

}  // namespace

TEST_CASE("sha256: the NIST example vectors") {
  // Catches a wrong constant, rotation, padding or length encoding: each changes every digest.
  CHECK(util::sha256_hex("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(util::sha256_hex("") ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // 56 bytes: the padding needs a second block.
  CHECK(util::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(util::sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnop"
                         "qklmnopqrlmnopqrsmnopqrstnopqrstu") ==
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  CHECK(util::sha256_hex(std::string(1000000, 'a')) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256: streaming in pieces equals one update") {
  // Catches a buffering bug (a partial block lost or compressed twice) at any split point.
  std::string msg;
  for (int i = 0; i < 300; ++i) msg += char('a' + (i * 7) % 26);
  const std::string whole = util::sha256_hex(msg);
  util::Sha256 h;
  for (size_t piece = 1; piece <= 130; ++piece) {
    for (size_t at = 0; at < msg.size(); at += piece)
      h.update(std::string_view(msg).substr(at, piece));
    CAPTURE(piece);
    REQUIRE(h.finish_hex() == whole);  // finish() also resets for the next round
  }
}

TEST_CASE("sha256: a model file or folder") {
  const fs::path d = scratch("model");
  write_file(d / "model.gguf", "weights");
  CHECK(util::sha256_model(d / "model.gguf") == util::sha256_hex("weights"));

  const fs::path f = d / "folder";
  fs::create_directories(f);
  write_file(f / "model-00002-of-00002.safetensors", "bbbb");
  write_file(f / "model-00001-of-00002.safetensors", "aaa");
  write_file(f / "config.json", "{}");
  const std::string base = util::sha256_model(f);
  // Files are taken in name order, each as name, NUL, 8-byte size, bytes.
  util::Sha256 expect;
  for (auto [name, bytes] : {std::pair<std::string, std::string>{"config.json", "{}"},
                             {"model-00001-of-00002.safetensors", "aaa"},
                             {"model-00002-of-00002.safetensors", "bbbb"}}) {
    expect.update(name);
    expect.update_value(uint8_t(0));
    expect.update_value(uint64_t(bytes.size()));
    expect.update(bytes);
  }
  CHECK(base == expect.finish_hex());

  // Tokenizer files and notes are not part of the model.
  write_file(f / "tokenizer.json", "{\"x\": 1}");
  write_file(f / "README.md", "notes");
  CHECK(util::sha256_model(f) == base);
  // Moving a byte from one weight file to the next changes the hash (sizes are hashed).
  write_file(f / "model-00001-of-00002.safetensors", "aaab");
  write_file(f / "model-00002-of-00002.safetensors", "bbb");
  CHECK(util::sha256_model(f) != base);

  const fs::path empty = d / "empty";
  fs::create_directories(empty);
  write_file(empty / "config.json", "{}");
  CHECK(test::error_of([&] { util::sha256_model(empty); }).find("no weight files") !=
        std::string::npos);
  CHECK(test::error_of([&] { util::sha256_model(d / "missing"); }).find("not a file or a folder") !=
        std::string::npos);
  fs::remove_all(d);
}
