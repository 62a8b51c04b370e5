#pragma once
// Tests that need a process to die (kill -9 in the middle of training) run part of themselves in a
// child: the test program started again with MIL_TEST_CHILD=<name> runs the function registered
// under that name instead of the test cases (tests/common/main.cpp) and exits with its result.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace mil::test {

using ChildMain = std::function<int()>;

inline std::map<std::string, ChildMain>& child_registry() {
  static std::map<std::string, ChildMain> r;
  return r;
}

struct RegisterChild {
  RegisterChild(const std::string& name, ChildMain f) { child_registry()[name] = std::move(f); }
};

// Starts this test program as the child `name` with extra environment `env` ("KEY=VALUE").
inline pid_t spawn_child(const std::string& name, const std::vector<std::string>& env) {
  std::vector<std::string> vars = {"MIL_TEST_CHILD=" + name};
  vars.insert(vars.end(), env.begin(), env.end());
  for (char** e = environ; *e; ++e) vars.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  char* argv[] = {exe.data(), nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data()) != 0) return -1;
  return pid;
}

// Waits for the child; kills it with SIGKILL after `kill_after` if it is still running (a
// negative duration waits for it to end). Returns its exit code, or -1 when it was killed.
inline int wait_or_kill(pid_t pid, std::chrono::milliseconds kill_after) {
  const auto deadline = std::chrono::steady_clock::now() + kill_after;
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid, &status, kill_after.count() < 0 ? 0 : WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace mil::test
