#pragma once
// Tensor<T, Device>: element type and device fixed at compile time, shape at run time.
// Storage is contiguous and reference-counted; view() reshapes and slice() narrows dimension 0,
// both sharing storage. Copies between devices go through copy_from() / to<D>().
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "allocator.hpp"
#include "device.hpp"
#include "dtype.hpp"
#include "shape.hpp"

namespace mil {

template <Device D>
class Storage {
 public:
  explicit Storage(size_t bytes) : bytes_(bytes) {
    if constexpr (std::is_same_v<D, Cpu>) {
      ptr_ = cpu_allocate(bytes);
    } else {
#if MIL_CUDA_ENABLED
      ptr_ = cuda::CachingAllocator::instance().allocate(bytes, cuda::current_stream());
#else
      MIL_FAIL("this build of mil has no CUDA support: reconfigure with -DMIL_CUDA=ON");
#endif
    }
  }
  ~Storage() {
    if constexpr (std::is_same_v<D, Cpu>) {
      cpu_deallocate(ptr_);
    } else {
#if MIL_CUDA_ENABLED
      cuda::CachingAllocator::instance().deallocate(ptr_);
#endif
    }
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <Element T, Device D>
class Tensor {
 public:
  using value_type = T;
  using device_type = D;

  Tensor() = default;

  static Tensor empty(Shape shape) {
    Tensor t;
    t.shape_ = shape;
    size_t bytes = size_t(checked_mul(shape.numel(), int64_t(sizeof(T))));
    t.storage_ = std::make_shared<Storage<D>>(bytes);
    return t;
  }
  static Tensor zeros(Shape shape) {
    Tensor t = empty(shape);
    t.zero_();
    return t;
  }
  // A CPU tensor holding the given values (tests and small constants).
  static Tensor from(Shape shape, const std::vector<T>& values) {
    MIL_CHECK(int64_t(values.size()) == shape.numel(), "Tensor::from: ", values.size(),
              " values for shape ", shape.str());
    Tensor<T, Cpu> host = Tensor<T, Cpu>::empty(shape);
    // memcpy from an empty vector's null data() is undefined even for 0 bytes.
    if (!values.empty()) std::memcpy(host.data(), values.data(), values.size() * sizeof(T));
    if constexpr (std::is_same_v<D, Cpu>) return host;
    else return host.template to<D>();
  }

  // A tensor that names a shape and holds no elements: a parameter whose values are kept in
  // another form (a GGUF file's blocks, nn/block_weights.hpp). data() is null; copies refuse it.
  static Tensor shape_only(Shape shape) {
    Tensor t;
    t.shape_ = shape;
    return t;
  }

  bool defined() const { return storage_ != nullptr; }
  T* data() { return base(); }
  const T* data() const { return base(); }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t size(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return size_t(numel()) * sizeof(T); }

  // Same elements under another shape of equal element count; shares storage.
  Tensor view(Shape shape) const {
    MIL_CHECK(shape.numel() == numel(), "view: cannot view ", shape_.str(), " as ", shape.str());
    Tensor t = *this;
    t.shape_ = shape;
    return t;
  }
  // Rows [begin, end) of dimension 0; shares storage.
  Tensor slice(int64_t begin, int64_t end) const {
    MIL_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= size(0), "slice [", begin, ", ",
              end, ") out of range for shape ", shape_.str());
    Tensor t = *this;
    t.offset_ = offset_ + begin * (size(0) ? numel() / size(0) : 0);
    t.shape_ = shape_.with_dim0(end - begin);
    return t;
  }

  void zero_() {
    if (!numel()) return;
    if constexpr (std::is_same_v<D, Cpu>) std::memset(static_cast<void*>(data()), 0, nbytes());
    else {
#if MIL_CUDA_ENABLED
      MIL_CUDA_CHECK(cudaMemsetAsync(data(), 0, nbytes(), cuda::current_stream()));
#endif
    }
  }

  // Copies src (same element count, any device) into this tensor.
  template <Device S>
  void copy_from(const Tensor<T, S>& src) {
    MIL_CHECK(src.numel() == numel(), "copy_from: ", src.shape().str(), " into ", shape_.str());
    if (!numel()) return;
    MIL_CHECK(defined() && src.defined(), "copy_from: a tensor of shape ", shape_.str(),
              " without elements (a weight kept in block format only)");
    if constexpr (std::is_same_v<D, Cpu> && std::is_same_v<S, Cpu>) {
      std::memmove(data(), src.data(), nbytes());
    } else {
#if MIL_CUDA_ENABLED
      cudaMemcpyKind kind = std::is_same_v<D, Cpu>   ? cudaMemcpyDeviceToHost
                            : std::is_same_v<S, Cpu> ? cudaMemcpyHostToDevice
                                                     : cudaMemcpyDeviceToDevice;
      MIL_CUDA_CHECK(cudaMemcpyAsync(data(), src.data(), nbytes(), kind, cuda::current_stream()));
      if (kind != cudaMemcpyDeviceToDevice) MIL_CUDA_CHECK(cudaStreamSynchronize(cuda::current_stream()));
#else
      MIL_FAIL("this build of mil has no CUDA support: reconfigure with -DMIL_CUDA=ON");
#endif
    }
  }

  template <Device To>
  Tensor<T, To> to() const {
    auto t = Tensor<T, To>::empty(shape_);
    t.copy_from(*this);
    return t;
  }
  Tensor clone() const { return to<D>(); }

  // Element access on the CPU, row-major.
  T& operator[](int64_t i) requires std::is_same_v<D, Cpu> { return data()[i]; }
  const T& operator[](int64_t i) const requires std::is_same_v<D, Cpu> { return data()[i]; }
  std::vector<T> to_vector() const {
    std::vector<T> v(static_cast<size_t>(numel()));
    if (!numel()) return v;
    MIL_CHECK(defined(), "to_vector: a tensor of shape ", shape_.str(), " without elements");
    if constexpr (std::is_same_v<D, Cpu>) std::memcpy(v.data(), data(), nbytes());
    else to<Cpu>().copy_to_host(v.data());
    return v;
  }
  bool shares_storage_with(const Tensor& o) const { return storage_ == o.storage_; }

 private:
  template <Element, Device> friend class Tensor;
  void copy_to_host(T* dst) const { std::memcpy(dst, data(), nbytes()); }
  T* base() const {
    return storage_ ? static_cast<T*>(storage_->data()) + offset_ : nullptr;
  }

  std::shared_ptr<Storage<D>> storage_;
  int64_t offset_ = 0;
  Shape shape_;
};

// Shape check used by ops: throws naming the op and both shapes.
template <class A, class B>
inline void check_same_shape(const char* op, const A& a, const B& b) {
  MIL_CHECK(a.shape() == b.shape(), op, ": shape mismatch ", a.shape().str(), " vs ",
            b.shape().str());
}

}  // namespace mil
