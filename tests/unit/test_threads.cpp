// The thread-count rules of core/threads.h on fake cgroup files, affinity counts and environment values.
#include <gtest/gtest.h>

#include <cstdlib>

#include "optima/core/threads.h"

namespace optima {
namespace {

TEST(Threads, CgroupV2CpuMax) {
  EXPECT_EQ(parse_cgroup_v2_cpu_max("max 100000\n"), std::nullopt);
  EXPECT_DOUBLE_EQ(*parse_cgroup_v2_cpu_max("200000 100000\n"), 2.0);
  EXPECT_DOUBLE_EQ(*parse_cgroup_v2_cpu_max("150000 100000"), 1.5);
  EXPECT_DOUBLE_EQ(*parse_cgroup_v2_cpu_max("50000 100000\n"), 0.5);
  EXPECT_DOUBLE_EQ(*parse_cgroup_v2_cpu_max("300000"), 3.0);  // the period defaults to 100 ms
  EXPECT_EQ(parse_cgroup_v2_cpu_max(""), std::nullopt);
  EXPECT_EQ(parse_cgroup_v2_cpu_max("lots 100000"), std::nullopt);
  EXPECT_EQ(parse_cgroup_v2_cpu_max("100000 0"), std::nullopt);
}

TEST(Threads, CgroupV1Quota) {
  EXPECT_EQ(parse_cgroup_v1_quota("-1\n", "100000\n"), std::nullopt);
  EXPECT_DOUBLE_EQ(*parse_cgroup_v1_quota("400000\n", "100000\n"), 4.0);
  EXPECT_DOUBLE_EQ(*parse_cgroup_v1_quota("25000", "50000"), 0.5);
  EXPECT_EQ(parse_cgroup_v1_quota("x", "100000"), std::nullopt);
}

TEST(Threads, ProcSelfCgroup) {
  const char* hybrid =
      "12:pids:/user.slice\n"
      "4:cpu,cpuacct:/slurm/uid_1/job_7\n"
      "1:name=systemd:/user.slice/a:b\n"
      "0::/user.slice/session-3.scope\n";
  EXPECT_EQ(parse_proc_cgroup(hybrid, true), "/user.slice/session-3.scope");
  EXPECT_EQ(parse_proc_cgroup(hybrid, false), "/slurm/uid_1/job_7");
  EXPECT_EQ(parse_proc_cgroup("0::/\n", true), "/");
  EXPECT_EQ(parse_proc_cgroup("0::/\n", false), std::nullopt);
  EXPECT_EQ(parse_proc_cgroup("3:cpuacct:/x\n5:cpuset:/y\n", false), std::nullopt);  // neither is `cpu`
  EXPECT_EQ(parse_proc_cgroup("", true), std::nullopt);
}

TEST(Threads, PositiveCount) {
  EXPECT_EQ(parse_positive_count("4"), 4);
  EXPECT_EQ(parse_positive_count(" 8\n"), 8);
  EXPECT_EQ(parse_positive_count("4,2"), 4);
  EXPECT_EQ(parse_positive_count("0"), std::nullopt);
  EXPECT_EQ(parse_positive_count("-3"), std::nullopt);
  EXPECT_EQ(parse_positive_count("four"), std::nullopt);
  EXPECT_EQ(parse_positive_count(""), std::nullopt);
}

TEST(Threads, ChoiceRules) {
  ThreadSources s;
  s.affinity_cpus = 16;
  ThreadChoice c = choose_threads(s, 0);
  EXPECT_EQ(c.threads, 16);
  EXPECT_NE(c.rule.find("affinity"), std::string::npos) << c.rule;

  s.cgroup_cpus = 2.5;  // a fractional quota rounds up: the third thread still gets half a CPU
  c = choose_threads(s, 0);
  EXPECT_EQ(c.threads, 3);
  EXPECT_NE(c.rule.find("cgroup"), std::string::npos) << c.rule;

  s.cgroup_cpus = 0.2;  // at least one thread
  EXPECT_EQ(choose_threads(s, 0).threads, 1);

  s.cgroup_cpus = 64;  // a quota above the affinity mask does not raise the count
  EXPECT_EQ(choose_threads(s, 0).threads, 16);

  s.slurm_cpus = 4;
  c = choose_threads(s, 0);
  EXPECT_EQ(c.threads, 4);
  EXPECT_NE(c.rule.find("SLURM_CPUS_PER_TASK"), std::string::npos) << c.rule;

  s.omp_num_threads = "6";  // the user's OMP_NUM_THREADS is respected, even above the limits
  c = choose_threads(s, 0);
  EXPECT_EQ(c.threads, 6);
  EXPECT_NE(c.rule.find("OMP_NUM_THREADS"), std::string::npos) << c.rule;

  s.omp_num_threads = "bogus";  // not a count: the limits decide
  EXPECT_EQ(choose_threads(s, 0).threads, 4);

  c = choose_threads(s, 5);  // --threads wins over everything
  EXPECT_EQ(c.threads, 5);
  EXPECT_NE(c.rule.find("--threads"), std::string::npos) << c.rule;

  EXPECT_EQ(choose_threads(ThreadSources{}, 0).threads, 1);  // nothing known
}

TEST(Threads, LocalProcessesShareTheMachine) {
  ThreadSources s;
  s.affinity_cpus = 16;
  s.local_processes = 4;
  ThreadChoice c = choose_threads(s, 0);
  EXPECT_EQ(c.threads, 4);
  EXPECT_NE(c.rule.find("LOCAL_WORLD_SIZE=4"), std::string::npos) << c.rule;
  s.local_processes = 32;  // more processes than CPUs: one thread each
  EXPECT_EQ(choose_threads(s, 0).threads, 1);
  s.local_processes = 4;
  s.slurm_cpus = 3;  // SLURM's count is per task already
  EXPECT_EQ(choose_threads(s, 0).threads, 3);
  s.omp_num_threads.emplace("2");
  EXPECT_EQ(choose_threads(s, 0).threads, 2);
  EXPECT_EQ(choose_threads(s, 7).threads, 7);
}

// The real sources of this process: at least one CPU, and no more than the machine has.
TEST(Threads, ReadsThisProcess) {
  const ThreadSources s = read_thread_sources();
  EXPECT_GE(s.affinity_cpus, 1);
  const ThreadChoice c = choose_threads(s, 0);
  EXPECT_GE(c.threads, 1);
  EXPECT_FALSE(c.rule.empty());
}

}  // namespace
}  // namespace optima
