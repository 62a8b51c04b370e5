// Dequantisation of every ggml type mil reads: hand-made blocks with known scales and quants
// (expected values written out from the block layout), and random blocks against the values of
// the `gguf` package (tests/io/golden/dequant_golden.json, scripts/make_gguf_golden.py).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include <mil/io/dequantize.hpp>

#include "mini_json.hpp"

using namespace mil;
using mil::io::GgmlType;
using mil::io::dequantize_row;

namespace {

using Bytes = std::vector<uint8_t>;
void put_half(Bytes& b, float x) {
  uint16_t h = fp16(x).bits;
  b.push_back(uint8_t(h & 0xFF));
  b.push_back(uint8_t(h >> 8));
}
std::vector<float> deq(GgmlType t, const Bytes& b, int64_t n) {
  std::vector<float> y(size_t(n), -12345.f);
  dequantize_row(t, b.data(), y.data(), n);
  return y;
}

}  // namespace

TEST_CASE("gguf: dequantize F32 F16 BF16 by hand") {
  std::vector<float> v = {1.f, -2.5f, 3.25f};
  Bytes b(12);
  std::memcpy(b.data(), v.data(), 12);
  CHECK(deq(GgmlType::F32, b, 3) == v);
  Bytes h;
  for (float x : {1.f, -2.5f, 65504.f, 5.9604645e-8f}) put_half(h, x);
  CHECK(deq(GgmlType::F16, h, 4) == std::vector<float>{1.f, -2.5f, 65504.f, 5.9604645e-8f});
  Bytes bf = {0x80, 0x3F, 0x20, 0xC0};  // 0x3F80 = 1.0, 0xC020 = -2.5
  CHECK(deq(GgmlType::BF16, bf, 2) == std::vector<float>{1.f, -2.5f});
}

TEST_CASE("gguf: dequantize Q8_0 Q4_0 Q4_1 blocks by hand") {
  Bytes q8;
  put_half(q8, 0.25f);
  for (int j = 0; j < 32; ++j) q8.push_back(uint8_t(int8_t(j * 8 - 128)));
  auto y = deq(GgmlType::Q8_0, q8, 32);
  for (int j = 0; j < 32; ++j) CHECK(y[j] == 0.25f * float(j * 8 - 128));

  // Byte j holds element j (low nibble) and element j + 16 (high nibble).
  Bytes q40;
  put_half(q40, 0.5f);
  for (int j = 0; j < 16; ++j) q40.push_back(uint8_t(j | ((15 - j) << 4)));
  y = deq(GgmlType::Q4_0, q40, 32);
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == 0.5f * float(j - 8));
    CHECK(y[j + 16] == 0.5f * float(7 - j));
  }
  Bytes q41;
  put_half(q41, 2.f);
  put_half(q41, -3.f);
  for (int j = 0; j < 16; ++j) q41.push_back(uint8_t(j | ((15 - j) << 4)));
  y = deq(GgmlType::Q4_1, q41, 32);
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == 2.f * float(j) - 3.f);
    CHECK(y[j + 16] == 2.f * float(15 - j) - 3.f);
  }
}

TEST_CASE("gguf: dequantize Q5_0 Q5_1 blocks by hand") {
  // Fifth bits: qh bit j for element j; set for even elements only (0x55555555).
  for (bool with_min : {false, true}) {
    Bytes b;
    put_half(b, 0.5f);
    if (with_min) put_half(b, 1.f);
    for (int i = 0; i < 4; ++i) b.push_back(0x55);
    for (int j = 0; j < 16; ++j) b.push_back(uint8_t(j | ((15 - j) << 4)));
    auto y = deq(with_min ? GgmlType::Q5_1 : GgmlType::Q5_0, b, 32);
    for (int e = 0; e < 32; ++e) {
      int low = e < 16 ? e : 15 - (e - 16);
      int q = low + (e % 2 == 0 ? 16 : 0);
      float want = with_min ? 0.5f * float(q) + 1.f : 0.5f * float(q - 16);
      CHECK(y[e] == want);
    }
  }
}

namespace {

// 12 bytes packing eight 6-bit scales and mins the way Q4_K / Q5_K do.
Bytes pack_k_scales(const int sc[8], const int mn[8]) {
  Bytes s(12, 0);
  for (int j = 0; j < 4; ++j) {
    s[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = uint8_t((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = uint8_t((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  return s;
}

}  // namespace

TEST_CASE("gguf: dequantize Q4_K Q5_K blocks by hand") {
  const int sc[8] = {1, 2, 3, 63, 17, 33, 48, 60}, mn[8] = {0, 5, 10, 20, 31, 40, 50, 63};
  const float d = 0.5f, dmin = 0.25f;
  for (bool q5 : {false, true}) {
    Bytes b;
    put_half(b, d);
    put_half(b, dmin);
    Bytes s = pack_k_scales(sc, mn);
    b.insert(b.end(), s.begin(), s.end());
    // Element e: sub-block s = e / 32, l = e % 32; its 4-bit code (l + s) % 16, fifth bit set
    // when l is odd.
    if (q5)
      for (int l = 0; l < 32; ++l) b.push_back(uint8_t(l % 2 ? 0xFF : 0x00));
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l)
        b.push_back(uint8_t(((l + 2 * c) % 16) | (((l + 2 * c + 1) % 16) << 4)));
    REQUIRE(int64_t(b.size()) == io::ggml_type_info(uint32_t(q5 ? GgmlType::Q5_K : GgmlType::Q4_K))->block_bytes);
    auto y = deq(q5 ? GgmlType::Q5_K : GgmlType::Q4_K, b, 256);
    for (int e = 0; e < 256; ++e) {
      int s_ = e / 32, l = e % 32;
      int q = (l + s_) % 16 + (q5 && l % 2 ? 16 : 0);
      INFO("element ", e);
      CHECK(y[e] == d * float(sc[s_]) * float(q) - dmin * float(mn[s_]));
    }
  }
}

TEST_CASE("gguf: dequantize Q6_K block by hand") {
  // Element e (0..255): half h = e / 128, k = (e % 128) / 32, l = e % 32; its code is
  // (e * 7) % 64, scale sc[e / 16] = e / 16 - 8.
  Bytes b(210, 0);
  for (int e = 0; e < 256; ++e) {
    int h = e / 128, k = (e % 128) / 32, l = e % 32, code = (e * 7) % 64;
    uint8_t& low = b[size_t(64 * h + l + 32 * (k % 2))];
    low = uint8_t(low | ((code & 15) << (k < 2 ? 0 : 4)));
    uint8_t& high = b[size_t(128 + 32 * h + l)];
    high = uint8_t(high | ((code >> 4) << (2 * k)));
  }
  for (int i = 0; i < 16; ++i) b[size_t(192 + i)] = uint8_t(int8_t(i - 8));
  uint16_t dh = fp16(0.125f).bits;
  std::memcpy(&b[208], &dh, 2);
  auto y = deq(GgmlType::Q6_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    INFO("element ", e);
    CHECK(y[e] == 0.125f * float(e / 16 - 8) * float((e * 7) % 64 - 32));
  }
}

TEST_CASE("gguf: dequantize rejects unsupported types and partial blocks") {
  Bytes b(256);
  std::vector<float> y(256);
  auto msg = [&](GgmlType t, int64_t n) {
    try {
      dequantize_row(t, b.data(), y.data(), n);
    } catch (const mil::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  CHECK(msg(GgmlType::Q2_K, 256).find("ggml type Q2_K is not supported") != std::string::npos);
  CHECK(msg(GgmlType::Q4_0, 33).find("not a whole number of Q4_0 blocks") != std::string::npos);
  CHECK(msg(GgmlType(1000), 32).find("unknown ggml tensor type 1000") != std::string::npos);
  CHECK(io::ggml_row_bytes(GgmlType::Q6_K, 512) == 420);
  CHECK(io::ggml_row_bytes(GgmlType::Q4_1, 576) == 360);
}

TEST_CASE("gguf: dequantize matches the gguf package on random blocks of every type") {
  auto path = std::filesystem::path(MIL_SOURCE_DIR) / "tests/io/golden/dequant_golden.json";
  auto g = test::Json::load(path.string());
  std::map<std::string, GgmlType> types = {
      {"F32", GgmlType::F32}, {"F16", GgmlType::F16}, {"BF16", GgmlType::BF16},
      {"Q8_0", GgmlType::Q8_0}, {"Q4_0", GgmlType::Q4_0}, {"Q4_1", GgmlType::Q4_1},
      {"Q5_0", GgmlType::Q5_0}, {"Q5_1", GgmlType::Q5_1}, {"Q4_K", GgmlType::Q4_K},
      {"Q5_K", GgmlType::Q5_K}, {"Q6_K", GgmlType::Q6_K}};
  std::set<std::string> seen;
  for (const auto& c : g["cases"].items) {
    const std::string& name = c["type"].str;
    INFO(name);
    REQUIRE(types.count(name));
    seen.insert(name);
    const std::string& hex = c["hex"].str;
    Bytes raw(hex.size() / 2);
    for (size_t i = 0; i < raw.size(); ++i) raw[i] = uint8_t(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    auto want = c["values"].numbers();
    int64_t n = int64_t(c["n"].num);
    REQUIRE(int64_t(want.size()) == n);
    auto y = deq(types[name], raw, n);
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += std::fabs(double(y[i]) - want[i]) > 1e-6 * std::fabs(want[i]) + 1e-12;
    CHECK(bad == 0);
  }
  CHECK(seen.size() == types.size());
}
