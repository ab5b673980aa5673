// What the MPI launcher tells each process through its environment, read
// before MPI (or any GPU) is initialised so each rank can pick its device.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace srgpt {
namespace {

// The variables one launcher family sets: rank, world size, rank on the node.
struct LauncherVariables {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
};

// Checked in this order: mpirun inside a Slurm allocation sets both Open
// MPI's and Slurm's variables, and the launcher that started this process
// is the more specific one.
constexpr LauncherVariables kLaunchers[] = {
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"MPICH/PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

bool is_set(const char* variable) { return std::getenv(variable) != nullptr; }

// The variable's value as a non-negative int, or nothing when unset.
std::optional<int> read_count(const char* variable) {
  const char* text = std::getenv(variable);
  if (!text) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long value = std::strtol(text, &end, 10);
  bool digits_only = *text >= '0' && *text <= '9' && *end == '\0';
  if (!digits_only || errno == ERANGE || value > 1000000000L)
    fail("environment variable {}='{}' is not a non-negative integer (set by the MPI launcher; unset it when not "
         "launching with mpirun or srun)",
         variable, text);
  return int(value);
}

}  // namespace

LaunchInfo launch_info_from_environment() {
  for (const LauncherVariables& vars : kLaunchers) {
    if (!is_set(vars.rank) && !is_set(vars.size)) continue;
    std::optional<int> rank = read_count(vars.rank), size = read_count(vars.size);
    if (!rank || !size)
      fail("the {} launcher environment is incomplete: {} is set but {} is not", vars.launcher,
           rank ? vars.rank : vars.size, rank ? vars.size : vars.rank);
    if (*size < 1) fail("{}={} from the {} launcher: the world size must be at least 1", vars.size, *size, vars.launcher);
    if (*rank >= *size)
      fail("{}={} but {}={} from the {} launcher: the rank must be below the world size", vars.rank, *rank, vars.size,
           *size, vars.launcher);

    LaunchInfo info;
    info.rank = *rank;
    info.size = *size;
    info.launcher = vars.launcher;
    // Prefer this launcher's own local rank; MPICH under srun --mpi=pmi2
    // leaves it to Slurm's variable.
    const char* local_variable = nullptr;
    for (const char* candidate : {vars.local_rank, kLaunchers[0].local_rank, kLaunchers[1].local_rank,
                                  kLaunchers[2].local_rank}) {
      if (is_set(candidate)) {
        local_variable = candidate;
        break;
      }
    }
    if (local_variable) {
      info.local_rank = *read_count(local_variable);
      if (info.local_rank >= info.size)
        fail("{}={} but the world has {} ranks ({}={}): the local rank must be below the world size", local_variable,
             info.local_rank, info.size, vars.size, info.size);
    } else if (info.size > 1) {
      fail("the {} launcher set {} and {} but no local rank (none of {}, {}, {} is set): cannot tell which GPU "
           "this rank should use",
           vars.launcher, vars.rank, vars.size, kLaunchers[0].local_rank, kLaunchers[1].local_rank,
           kLaunchers[2].local_rank);
    }
    return info;
  }
  return LaunchInfo{};
}

bool launched_under_mpi() { return launch_info_from_environment().launcher != "none"; }

CommunicatorOptions CommunicatorOptions::from_environment() {
  CommunicatorOptions options;
  if (const char* text = std::getenv("SRGPT_COMM_TIMEOUT_S")) {
    char* end = nullptr;
    double seconds = std::strtod(text, &end);
    // At most 1e9 s (31 years): timed waits count nanoseconds in int64.
    if (end == text || *end != '\0' || !std::isfinite(seconds) || seconds <= 0 || seconds > 1e9)
      fail("SRGPT_COMM_TIMEOUT_S='{}' is not a number of seconds in (0, 1e9] (how long a collective waits for the "
           "other ranks before failing; default {})",
           text, options.timeout_s);
    options.timeout_s = seconds;
  }
  return options;
}

}  // namespace srgpt
