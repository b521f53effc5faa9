// The thread count from the CPUs this process may use, and OpenMP's waiting policy (see threads.h). LibTorch-free:
// applying the choice is in threads_torch.cpp.
#include "optima/core/threads.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>

namespace optima {

namespace {

// Marks the environment of the re-executed process (and tells it apart from one the user gave a policy).
constexpr const char kWaitPolicyMark[] = "OPTIMA_SET_OMP_WAIT_POLICY=1";
constexpr const char kWaitPolicy[] = "OMP_WAIT_POLICY=PASSIVE";
// libgomp's spin before a waiting thread sleeps, which PASSIVE sets to 0: about 0.1 ms covers the gaps between the
// back-to-back regions of a solver iteration (each woken thread otherwise pays a futex wake-up: q_proj's CG of an
// OPT-125M-shaped model took 0.59-0.66 s with none, 0.46 s with this, 0.98-1.10 s against 1.32-1.43 s with two
// busy processes on the 2 cores) and is short enough not to take the CPU from a thread with work, as the 3 ms of
// the default did.
constexpr const char kSpinCount[] = "GOMP_SPINCOUNT=10000";

bool starts_with(const char* s, const char* prefix) {
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::optional<long long> parse_integer(std::string_view s) {
  s = trim(s);
  long long value = 0;
  const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (error != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

std::optional<double> quota_cpus(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return std::nullopt;  // -1 (v1) or a malformed file: no limit known
  return static_cast<double>(quota) / static_cast<double>(period);
}

std::optional<std::string> read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<double> smaller(std::optional<double> a, std::optional<double> b) {
  if (!a) return b;
  if (!b) return a;
  return std::min(*a, *b);
}

// The tightest quota on `relative` and its ancestors under `mount` (a parent's quota limits its children too).
template <typename ReadQuota>
std::optional<double> tightest_quota(const std::filesystem::path& mount, const std::string& relative, ReadQuota read) {
  std::optional<double> cpus;
  std::filesystem::path dir = std::filesystem::path(relative).relative_path();
  while (true) {
    cpus = smaller(cpus, read(mount / dir));
    if (dir.empty()) break;
    dir = dir.parent_path();
  }
  return cpus;
}

std::optional<double> read_cgroup_cpus() {
  const std::optional<std::string> self = read_file("/proc/self/cgroup");
  if (!self) return std::nullopt;
  if (const auto v2 = parse_proc_cgroup(*self, /*v2=*/true);
      v2 && std::filesystem::exists("/sys/fs/cgroup/cgroup.controllers"))
    return tightest_quota("/sys/fs/cgroup", *v2, [](const std::filesystem::path& dir) -> std::optional<double> {
      const auto text = read_file(dir / "cpu.max");
      return text ? parse_cgroup_v2_cpu_max(*text) : std::nullopt;
    });
  if (const auto v1 = parse_proc_cgroup(*self, /*v2=*/false)) {
    for (const char* mount : {"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"}) {
      if (!std::filesystem::exists(mount)) continue;
      return tightest_quota(mount, *v1, [](const std::filesystem::path& dir) -> std::optional<double> {
        const auto quota = read_file(dir / "cpu.cfs_quota_us"), period = read_file(dir / "cpu.cfs_period_us");
        return quota && period ? parse_cgroup_v1_quota(*quota, *period) : std::nullopt;
      });
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<double> parse_cgroup_v2_cpu_max(std::string_view contents) {
  contents = trim(contents);
  const size_t space = contents.find(' ');
  const std::string_view quota = contents.substr(0, space);
  if (quota == "max") return std::nullopt;
  const auto q = parse_integer(quota);
  // The period is optional in what one writes to cpu.max; the kernel's default is 100 ms.
  const auto p =
      space == std::string_view::npos ? std::optional<long long>(100000) : parse_integer(contents.substr(space + 1));
  if (!q || !p) return std::nullopt;
  return quota_cpus(*q, *p);
}

std::optional<double> parse_cgroup_v1_quota(std::string_view quota_us, std::string_view period_us) {
  const auto q = parse_integer(quota_us), p = parse_integer(period_us);
  if (!q || !p) return std::nullopt;
  return quota_cpus(*q, *p);
}

std::optional<std::string> parse_proc_cgroup(std::string_view contents, bool v2) {
  while (!contents.empty()) {
    const size_t newline = contents.find('\n');
    const std::string_view line = contents.substr(0, newline);
    contents = newline == std::string_view::npos ? std::string_view() : contents.substr(newline + 1);
    // "hierarchy-ID:controller-list:cgroup-path"; the path may itself hold ':'.
    const size_t first = line.find(':');
    const size_t second = first == std::string_view::npos ? first : line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    const std::string_view id = line.substr(0, first), controllers = line.substr(first + 1, second - first - 1);
    const std::string_view path = line.substr(second + 1);
    if (v2) {
      if (id == "0" && controllers.empty()) return std::string(path);
      continue;
    }
    std::string_view rest = controllers;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      if (rest.substr(0, comma) == "cpu") return std::string(path);
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  return std::nullopt;
}

std::optional<int> parse_positive_count(std::string_view value) {
  const auto count = parse_integer(value.substr(0, value.find(',')));
  if (!count || *count <= 0 || *count > 1 << 20) return std::nullopt;
  return static_cast<int>(*count);
}

ThreadChoice choose_threads(const ThreadSources& sources, int requested) {
  if (requested > 0) return {requested, fmt::format("--threads {}", requested)};
  if (sources.omp_num_threads) {
    if (const auto n = parse_positive_count(*sources.omp_num_threads))
      return {*n, fmt::format("OMP_NUM_THREADS={} as set in the environment", *sources.omp_num_threads)};
  }
  ThreadChoice choice{std::max(1, sources.affinity_cpus),
                      fmt::format("the {} CPUs of the process's affinity mask", sources.affinity_cpus)};
  if (sources.affinity_cpus <= 0) choice = {1, "no CPU count known"};
  if (sources.cgroup_cpus) {
    const int quota = std::max(1, static_cast<int>(std::ceil(*sources.cgroup_cpus - 1e-9)));
    if (quota < choice.threads)
      choice = {quota, fmt::format("the cgroup's CPU quota of {:g} CPUs", *sources.cgroup_cpus)};
  }
  if (sources.slurm_cpus && *sources.slurm_cpus < choice.threads)
    choice = {*sources.slurm_cpus, fmt::format("SLURM_CPUS_PER_TASK={}", *sources.slurm_cpus)};
  if (sources.local_processes && *sources.local_processes > 1) {
    // SLURM_CPUS_PER_TASK is already per process; the other limits are shared by the job's local processes.
    if (choice.rule.rfind("SLURM", 0) != 0) {
      choice.threads = std::max(1, choice.threads / *sources.local_processes);
      choice.rule += fmt::format(", shared by LOCAL_WORLD_SIZE={} processes", *sources.local_processes);
    }
  }
  return choice;
}

ThreadSources read_thread_sources() {
  ThreadSources sources;
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) sources.affinity_cpus = CPU_COUNT(&mask);
  sources.cgroup_cpus = read_cgroup_cpus();
  if (const char* slurm = std::getenv("SLURM_CPUS_PER_TASK")) sources.slurm_cpus = parse_positive_count(slurm);
  if (const char* omp = std::getenv("OMP_NUM_THREADS")) sources.omp_num_threads = std::string(omp);
  if (const char* local = std::getenv("LOCAL_WORLD_SIZE")) sources.local_processes = parse_positive_count(local);
  return sources;
}

void reexec_with_passive_openmp_wait(char** argv, char** envp) {
  if (argv == nullptr || envp == nullptr) return;
  size_t count = 0;
  bool spin_count_given = false;
  for (; envp[count] != nullptr; ++count) {
    if (starts_with(envp[count], "OMP_WAIT_POLICY=")) return;  // the user's, or set by the re-execution
    spin_count_given = spin_count_given || starts_with(envp[count], "GOMP_SPINCOUNT=");
  }
  auto** env = static_cast<char**>(std::malloc((count + 4) * sizeof(char*)));
  if (env == nullptr) return;
  std::memcpy(env, envp, count * sizeof(char*));
  size_t end = count;
  env[end++] = const_cast<char*>(kWaitPolicy);
  env[end++] = const_cast<char*>(kWaitPolicyMark);
  if (!spin_count_given) env[end++] = const_cast<char*>(kSpinCount);
  env[end] = nullptr;
  execve("/proc/self/exe", argv, env);
  std::free(env);  // no /proc, or not executable: run on with the runtime's default
}

bool passive_wait_set_by_optima() {
  const char* mark = std::getenv("OPTIMA_SET_OMP_WAIT_POLICY");
  return mark != nullptr && std::strcmp(mark, "1") == 0;
}

}  // namespace optima
