#pragma once
// The tape: a list of coarse ops recorded during the forward pass, run in reverse by backward().
// An op is recorded as a node object; the Differentiable concept requires it to have a
// backward(), so an op without one does not compile.
#include <concepts>
#include <memory>
#include <utility>
#include <vector>

namespace mil::ag {

template <class Node>
concept Differentiable = requires(Node& node) {
  { node.backward() } -> std::same_as<void>;
};

class Tape {
 public:
  // False inside a NoGrad scope: ops then record nothing and keep no tensors for backward.
  bool recording() const { return recording_; }

  template <Differentiable Node>
  void record(Node node) {
    if (recording_) nodes_.push_back(std::make_unique<Model<Node>>(std::move(node)));
  }

  // Runs every recorded node's backward in reverse order, then forgets them (and the tensors
  // they held for backward). Loss ops are the seeds: their gradients were fixed when recorded.
  void backward() {
    for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) (*it)->backward();
    nodes_.clear();
  }
  void clear() { nodes_.clear(); }
  size_t size() const { return nodes_.size(); }

 private:
  friend class NoGrad;
  struct Concept {
    virtual ~Concept() = default;
    virtual void backward() = 0;
  };
  template <class Node>
  struct Model final : Concept {
    explicit Model(Node n) : node(std::move(n)) {}
    void backward() override { node.backward(); }
    Node node;
  };
  std::vector<std::unique_ptr<Concept>> nodes_;
  bool recording_ = true;
};

// Scope in which the tape records nothing (evaluation, generation, a frozen teacher's forward).
class NoGrad {
 public:
  explicit NoGrad(Tape& tape) : tape_(tape), previous_(tape.recording_) { tape.recording_ = false; }
  ~NoGrad() { tape_.recording_ = previous_; }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  Tape& tape_;
  bool previous_;
};

}  // namespace mil::ag
