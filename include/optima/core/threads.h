// How many threads optima computes with: the CPUs this process may actually use (its affinity mask, its cgroup's
// CPU quota, SLURM's allocation), unless --threads or OMP_NUM_THREADS says otherwise; and OpenMP's waiting policy.
// The parsing is pure functions of file contents and variables, so that the rules are tested with fake inputs;
// read_thread_sources() reads the real ones.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace optima {

// What limits the CPUs of this process, each as read (nullopt: absent, unlimited or unreadable).
struct ThreadSources {
  int affinity_cpus = 0;                       // CPUs in the sched_getaffinity mask (0: unknown)
  std::optional<double> cgroup_cpus;           // CPU quota / period of the process's cgroup (v2 cpu.max or v1 CFS)
  std::optional<int> slurm_cpus;               // SLURM_CPUS_PER_TASK
  std::optional<std::string> omp_num_threads;  // OMP_NUM_THREADS as the user set it
  std::optional<int> local_processes;          // LOCAL_WORLD_SIZE (torchrun): processes of one job on this machine
};

// The thread count and the rule that chose it, for the log.
struct ThreadChoice {
  int threads = 1;
  std::string rule;
};

// cgroup v2 `cpu.max` ("QUOTA PERIOD", QUOTA may be "max"): CPUs the quota allows, nullopt when unlimited.
std::optional<double> parse_cgroup_v2_cpu_max(std::string_view contents);
// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: CPUs the quota allows, nullopt when unlimited (-1).
std::optional<double> parse_cgroup_v1_quota(std::string_view quota_us, std::string_view period_us);
// The cgroup path of this process from /proc/self/cgroup: the v2 line ("0::/path"), or the v1 line whose
// controllers include `cpu`; nullopt when there is none.
std::optional<std::string> parse_proc_cgroup(std::string_view contents, bool v2);
// A positive integer from an environment variable's value (SLURM_CPUS_PER_TASK, OMP_NUM_THREADS); nullopt
// otherwise (OMP_NUM_THREADS may also be a list "4,2", whose first entry counts).
std::optional<int> parse_positive_count(std::string_view value);

// The thread count: `requested` (--threads, when > 0), else OMP_NUM_THREADS as the user set it, else the fewest
// CPUs any limit allows (affinity, cgroup quota rounded up, SLURM), divided among the job's processes on this
// machine (LOCAL_WORLD_SIZE), at least 1.
ThreadChoice choose_threads(const ThreadSources& sources, int requested);
// The sources of this process: sched_getaffinity, /proc/self/cgroup and the cgroup files under /sys/fs/cgroup,
// the environment.
ThreadSources read_thread_sources();

// Makes OpenMP threads sleep between parallel regions (OMP_WAIT_POLICY=PASSIVE) after a short spin (GOMP_SPINCOUNT=
// 10000, about 0.1 ms, unless the user set a spin count) unless the user set a policy: libgomp's default spins for
// about 3 ms after each region, which on a busy or small machine takes the CPU from the thread with work (a
// stories260k evaluation took 8-17 s with 2 spinning threads, 2 s passive), and none at all makes every region of a
// solver iteration wait for a futex wake-up (threads.cpp has the figures).
// libgomp reads the variable in its initialiser, before main(), and a setenv() even in the executable's
// .preinit_array is lost (glibc's own initialiser, which runs next, resets `environ` to the original array), so
// this re-executes the binary (/proc/self/exe, same pid and arguments) with the variables added: it costs one more
// dynamic load (about 0.05 s of CPU), none of LibTorch's initialisers. The optima binary calls it from its
// .preinit_array with the arguments and environment it gets; it returns when the user set a policy, after the
// re-execution, or when execve fails (the runtime's default then stays). Uses only the C library.
void reexec_with_passive_openmp_wait(char** argv, char** envp);
// Whether this process is the re-execution above (for the log).
bool passive_wait_set_by_optima();

// Applies the choice to LibTorch (intra-op threads; one inter-op thread, optima runs no concurrent graph work) and
// logs which rule chose it. Defined in the LibTorch part of the library.
void apply_threads(const ThreadChoice& choice);

// One intra-op thread for the lifetime of the scope when `serial` is true, the previous count restored after: a
// small layer's selection and solve are many short parallel regions, and waking the sleeping (PASSIVE) OpenMP
// threads for each costs more than the work shared (stories260k's 35 layers: 0.14 s on one thread, 0.6 s on two).
// Results do not depend on it beyond round-off, and the rule is a fixed function of the layer's shape, so a run
// stays reproducible. Defined in the LibTorch part of the library.
// The work, in multiply-adds, up to which a step runs under SerialScope: a layer's selection and solve (rows x
// cols²) and a calibration window's statistics update (tokens x features²).
inline constexpr int64_t kSerialWorkLimit = int64_t{1} << 25;
class SerialScope {
 public:
  explicit SerialScope(bool serial);
  ~SerialScope();
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  int previous_threads_ = 0;  // 0: the scope changed nothing
};

}  // namespace optima
