// Randomized mutation tests of every reader of outside input: run configs
// (with --set overrides), checkpoints (manifest, binary files, the resume
// path), token shards, safetensors + config.json for `srgpt import`, the
// GPT-2 tokenizer files and prepare's summary.json and inputs. Each starts
// from valid files srgpt wrote itself, applies a few random mutations (byte
// flips, inserts, deletes, truncation; JSON values replaced by other types,
// extreme numbers, long strings, deep nesting, deleted or duplicated keys)
// and feeds the result to the reader in this process. The property is the
// project's promise for bad input: the reader either succeeds, and then what
// it returns is consistent with the file, or throws an srgpt::Error with a
// message. Any other exception, a crash or a hang fails.
//
// SRGPT_FUZZ_SCALE=N runs N times the default iterations (a longer manual
// run); SRGPT_FUZZ_SEED=S replays the seed a failure reports.
#include <cxxabi.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/config.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "srgpt/hf_export.h"
#include "srgpt/model.h"
#include "srgpt/precision.h"
#include "srgpt/prepare.h"
#include "srgpt/safetensors.h"
#include "srgpt/tokenizer.h"
#include "srgpt/trainer.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using srgpt_test::contains;
using srgpt_test::read_file;
using srgpt_test::TempDir;

// ---------------------------------------------------------------- settings

int iterations(int by_default) {
  const char* scale = std::getenv("SRGPT_FUZZ_SCALE");
  return scale ? by_default * std::max(1, std::atoi(scale)) : by_default;
}

uint32_t fuzz_seed() {
  const char* seed = std::getenv("SRGPT_FUZZ_SEED");
  return seed ? uint32_t(std::strtoul(seed, nullptr, 10)) : srgpt_test::fresh_seed();
}

// Each iteration has its own generator, so a failure replays from the seed
// and the iteration number alone.
std::mt19937_64 iteration_rng(uint32_t seed, int iteration) {
  std::seed_seq seq{seed, uint32_t(iteration), 0x5eedu};
  return std::mt19937_64(seq);
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// Bytes as one printable line: \xNN for anything else, cut after `max`.
std::string printable(const std::string& bytes, size_t max = 400) {
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += char(c);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02X", c);
      out += escaped;
    }
  }
  if (bytes.size() > max) out += "... (" + std::to_string(bytes.size()) + " bytes)";
  return out;
}

// ---------------------------------------------------------------- guards

// Fails the process, naming the input, when one read takes far longer than
// any read of these small files should: a hang would otherwise stall the
// suite without saying which input caused it.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit) : limit_(limit), thread_([this] { watch(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void arm(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    what_ = what;
    deadline_ = std::chrono::steady_clock::now() + limit_;
    ++generation_;
    wake_.notify_all();
  }

 private:
  void watch() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      const uint64_t generation = generation_;
      if (generation == 0) {
        wake_.wait(lock);
        continue;
      }
      if (wake_.wait_until(lock, deadline_, [&] { return stop_ || generation_ != generation; })) continue;
      std::fprintf(stderr, "fuzz: a read did not finish within %lld s (a hang): %s\n", (long long)limit_.count(),
                   what_.c_str());
      std::abort();
    }
  }

  std::chrono::seconds limit_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  std::chrono::steady_clock::time_point deadline_;
  std::string what_;
  std::thread thread_;
};

// Caps the address space while the fuzz runs. The inputs are small (the
// tiny model's files), so a reader that needs more than the headroom sized
// an allocation from a damaged field instead of checking it against the
// input first; it then fails (std::bad_alloc, or the backends' "out of host
// memory" error, both of which the test reports) instead of zero-filling
// gigabytes of a shared machine.
class AddressSpaceCap {
 public:
  explicit AddressSpaceCap(uint64_t headroom) {
    getrlimit(RLIMIT_AS, &saved_);
    long pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    rlimit capped = saved_;
    const uint64_t cap = uint64_t(pages) * uint64_t(sysconf(_SC_PAGESIZE)) + headroom;
    if (saved_.rlim_cur == RLIM_INFINITY || cap < saved_.rlim_cur) capped.rlim_cur = cap;
    setrlimit(RLIMIT_AS, &capped);
  }
  ~AddressSpaceCap() { setrlimit(RLIMIT_AS, &saved_); }

 private:
  rlimit saved_{};
};

constexpr uint64_t kHeadroom = uint64_t(1) << 30;

// ---------------------------------------------------------------- mutations

// Text that replaces a JSON value: other types, numbers at and beyond the
// limits of int, int64, uint64 and double, what JSON cannot spell, long
// strings and deep nesting.
std::vector<std::string> replacement_values() {
  std::vector<std::string> v = {
      "null", "true", "false", "0", "-0", "1", "-1", "2", "3", "0.5", "-2.5", "1.0", "1e3", "5e5", "1e-300", "1e308",
      "-1e308", "1e400", "-1e400", "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967295",
      "4294967296", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
      "18446744073709551615", "18446744073709551616", "1e19", "-1e19", "123456789012345678901234567890", "NaN",
      "-Infinity", "Infinity", "nan", "0x10", "+1", "01", "1.", ".5", "\"\"", "\"x\"", "\"1e-3\"", "\"NaN\"",
      "\"bf16\"", "\"f32\"", "\"model.bin\"", "\"../model.bin\"", "\"/\"", "\"\\u0000\"", "\"\\ud800\"",
      "\"\\u00e9\\u0120\"", "[]", "{}", "[0]", "[-1]", "[1,2,3]", "[[1]]", "{\"\":1}", "{\"a\":{\"b\":[]}}",
      "[4294967296,4294967296]", "[9223372036854775807,2]"};
  v.push_back('"' + std::string(100000, 'a') + '"');
  v.push_back('"' + std::string(5000, '\\') + std::string(5000, '\\') + '"');
  for (int depth : {63, 64, 65, 100, 3000, 100000})
    v.push_back(std::string(depth, '[') + "1" + std::string(depth, ']'));
  std::string nested_objects;
  for (int i = 0; i < 200; ++i) nested_objects += "{\"a\":";
  v.push_back(nested_objects + "1" + std::string(200, '}'));
  return v;
}

// int32 / uint64 values for binary headers and length fields.
constexpr int64_t kInterestingInts[] = {0,         1,         2,          3,        4,        7,
                                        8,         255,       256,        1023,     1024,     1025,
                                        65535,     65536,     -1,         -2,       INT32_MAX, INT32_MIN,
                                        20240520,  20240326,  20240522,   INT64_MAX, INT64_MIN, int64_t(1) << 32,
                                        (int64_t(1) << 31) - 1024, 100 << 20, (100 << 20) + 1};

// The deepest nesting of brackets outside strings.
int nesting_depth(const std::string& s) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

class Mutator {
 public:
  explicit Mutator(std::mt19937_64& rng) : rng_(rng) {}

  size_t below(size_t n) { return n == 0 ? 0 : size_t(rng_() % n); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  // What was done, for a failure report.
  const std::vector<std::string>& log() const { return log_; }

  // `count` mutations; each is JSON-aware with probability `json_share`
  // while the text still parses, else a byte mutation.
  void mutate(std::string& s, int count, double json_share) {
    for (int i = 0; i < count; ++i) {
      if (json_share > 0 && chance(json_share) && json_mutation(s)) continue;
      byte_mutation(s);
    }
  }

  void byte_mutation(std::string& s) {
    const size_t n = s.size();
    switch (below(8)) {
      case 0: {  // flip one bit
        if (n == 0) break;
        const size_t at = below(n);
        const int bit = int(below(8));
        s[at] = char(s[at] ^ (1 << bit));
        note("flip bit " + std::to_string(bit) + " at " + std::to_string(at));
        break;
      }
      case 1: {  // set one byte
        if (n == 0) break;
        const size_t at = below(n);
        s[at] = char(below(256));
        note("set byte " + std::to_string(at) + " to " + std::to_string(uint8_t(s[at])));
        break;
      }
      case 2: {  // insert bytes: random, or characters that matter to JSON and numbers
        static const std::string kSpecial = "{}[]\":,-.eE0123456789 \\\n\x80\xff";
        const size_t at = below(n + 1), count = 1 + below(chance(0.1) ? 5000 : 4);
        std::string inserted;
        for (size_t k = 0; k < count; ++k)
          inserted += chance(0.5) ? kSpecial[below(kSpecial.size())] : char(below(256));
        s.insert(at, inserted);
        note("insert " + printable(inserted, 40) + " at " + std::to_string(at));
        break;
      }
      case 3: {  // delete a range
        if (n == 0) break;
        const size_t at = below(n), count = 1 + below(std::min<size_t>(n - at, chance(0.2) ? n : 8));
        s.erase(at, count);
        note("delete " + std::to_string(count) + " bytes at " + std::to_string(at));
        break;
      }
      case 4: {  // truncate
        const size_t at = below(n + 1);
        s.resize(at);
        note("truncate to " + std::to_string(at) + " bytes");
        break;
      }
      case 5: {  // duplicate a range
        if (n == 0) break;
        const size_t at = below(n), count = 1 + below(std::min<size_t>(n - at, 64));
        s.insert(below(n + 1), s.substr(at, count));
        note("duplicate " + std::to_string(count) + " bytes from " + std::to_string(at));
        break;
      }
      case 6: {  // an interesting little-endian integer, 4 or 8 bytes, at an aligned offset
        const size_t width = chance(0.5) ? 4 : 8;
        if (n < width) break;
        const size_t at = below(n / width) * width;
        const int64_t value = kInterestingInts[below(std::size(kInterestingInts))];
        std::memcpy(&s[at], &value, width);
        note("write int" + std::to_string(8 * width) + " " + std::to_string(value) + " at " + std::to_string(at));
        break;
      }
      default: {  // append bytes
        const std::string tail(1 + below(16), char(below(256)));
        s += tail;
        note("append " + std::to_string(tail.size()) + " bytes");
        break;
      }
    }
  }

  // Replaces, deletes, duplicates, renames or adds something in a JSON
  // document; false when `s` is not JSON (any more).
  bool json_mutation(std::string& s) {
    // The test's own recursive walks and dumps stay off deeply nested text.
    if (nesting_depth(s) > 100) return false;
    json doc = json::parse(s, nullptr, false);
    if (doc.is_discarded()) return false;
    std::vector<json::json_pointer> nodes;
    collect(doc, json::json_pointer(), nodes);
    if (!focus_.empty() && chance(0.5)) {
      // Half the mutations go where the caller says the interesting part is
      // (a manifest's state, rather than its long tensor table).
      std::vector<json::json_pointer> focused;
      for (const json::json_pointer& node : nodes)
        if (node.to_string().rfind(focus_, 0) == 0) focused.push_back(node);
      if (!focused.empty()) nodes = focused;
    }
    const json::json_pointer at = nodes[below(nodes.size())];
    const bool member = !at.empty() && doc.at(at.parent_pointer()).is_object();
    const std::string where = at.to_string().empty() ? "the root" : at.to_string();
    static const std::vector<std::string> kValues = replacement_values();
    std::string raw;  // text that replaces the node, or "" for an edit of `doc` itself
    // Numbers get a near value more often: a count scaled up but still in
    // range is what gets past validation into the code that sizes things.
    switch (doc.at(at).is_number() && chance(0.3) ? 3 : below(10)) {
      case 0:
      case 1:
      case 2:
        raw = kValues[below(kValues.size())];
        break;
      case 3:  // a number near the original: off by one, negated, scaled up, fractional, quoted
        if (doc.at(at).is_number()) {
          const double x = doc.at(at).get<double>();
          const double scale = std::ldexp(1.0, 1 + int(below(40)));
          const double near[] = {x + 1, x - 1, -x, x * scale, x * std::pow(10.0, double(1 + below(9))), x + 0.5, x / 3};
          const double y = near[below(std::size(near))];
          // Integers stay integers (1024, not 1024.0) where they fit.
          raw = doc.at(at).is_number_integer() && y == std::floor(y) && std::fabs(y) < 9e18 ? json(int64_t(y)).dump()
                                                                                              : json(y).dump();
          if (chance(0.2)) raw = '"' + doc.at(at).dump() + '"';
        } else {
          raw = kValues[below(kValues.size())];
        }
        break;
      case 4:  // delete a member or element
        if (at.empty()) return false;
        if (member) {
          doc.at(at.parent_pointer()).erase(at.back());
        } else {
          doc.at(at.parent_pointer()).erase(size_t(std::stoul(at.back())));
        }
        s = text_of(doc);
        note("delete " + where);
        return true;
      case 5:  // the member's key twice, the second time with another value
        if (!member) return false;
        raw = doc.at(at).dump() + "," + json(at.back()).dump() + ":" + kValues[below(kValues.size())];
        break;
      case 6:  // rename a key (a typo, an empty or a long key)
        if (!member) return false;
        {
          json& parent = doc.at(at.parent_pointer());
          std::string key = at.back();
          const std::string options[] = {key + "x", key.substr(0, key.size() / 2), "", std::string(3000, 'k'),
                                         "__metadata__"};
          const std::string renamed = options[below(std::size(options))];
          if (parent.contains(renamed)) return false;
          parent[renamed] = parent.at(key);
          parent.erase(key);
          s = text_of(doc);
          note("rename " + where + " to " + printable(renamed, 40));
          return true;
        }
      case 7:  // wrap the value in nesting, up to the parsers' limit and far beyond
        raw = std::string(chance(0.5) ? 1 + below(70) : 70 + below(20000), '[');
        raw += doc.at(at).dump() + std::string(raw.size(), ']');
        break;
      case 8:  // add an unknown member or element
        if (doc.at(at).is_object()) {
          const std::string& text = kValues[below(kValues.size())];
          const json value = nesting_depth(text) > 100 ? json() : json::parse(text, nullptr, false);
          doc.at(at)["fuzz_" + std::to_string(below(100))] = value.is_discarded() ? json("fuzz") : value;
        } else if (doc.at(at).is_array()) {
          doc.at(at).push_back(doc.at(at).empty() ? json(1) : doc.at(at).front());
        } else {
          return false;
        }
        s = text_of(doc);
        note("add to " + where);
        return true;
      default:  // replace a string by another string
        if (!doc.at(at).is_string()) return false;
        raw = json(doc.at(at).get<std::string>() + std::string(1 + below(3), "*?/."[below(4)])).dump();
        break;
    }
    // Splice the raw text in where the node was: it may be something no
    // json value can hold (NaN, 1e400, a duplicate key).
    const std::string marker = "@@fuzz-marker@@";
    doc.at(at) = marker;
    s = text_of(doc);
    s.replace(s.find('"' + marker + '"'), marker.size() + 2, raw);
    note("replace " + where + " by " + printable(raw, 60));
    return true;
  }

  void note(const std::string& what) { log_.push_back(what); }
  // JSON pointer prefix that half the JSON mutations stay under ("" for none).
  void focus_on(const std::string& prefix) { focus_ = prefix; }

 private:
  // A half key or string may not be UTF-8 any more; dump() would throw.
  static std::string text_of(const json& doc) { return doc.dump(-1, ' ', false, json::error_handler_t::ignore); }

  static void collect(const json& j, const json::json_pointer& here, std::vector<json::json_pointer>& out) {
    out.push_back(here);
    if (j.is_object())
      for (const auto& item : j.items()) collect(item.value(), here / item.key(), out);
    if (j.is_array())
      for (size_t i = 0; i < j.size(); ++i) collect(j[i], here / i, out);
  }

  std::mt19937_64& rng_;
  std::vector<std::string> log_;
  std::string focus_;
};

// ---------------------------------------------------------------- the property

// One fuzz case: which test, seed and iteration, what was mutated and how.
struct Case {
  std::string test;
  uint32_t seed;
  int iteration;
  std::vector<std::string> inputs;  // "file: first bytes" of each mutated input

  std::string describe(const Mutator& m) const {
    std::ostringstream out;
    out << test << ", seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << "), iteration " << iteration
        << "\n  mutations:";
    for (const std::string& step : m.log()) out << " [" << step << "]";
    for (const std::string& input : inputs) out << "\n  " << input;
    return out.str();
  }
  void add_input(const std::string& name, const std::string& bytes) {
    inputs.push_back(name + ": " + printable(bytes));
  }
};

// Runs one read of mutated input. It must return, and then `read`'s own
// consistency checks of what the reader returned must pass (it returns ""
// or what is inconsistent), or throw an srgpt::Error with a message.
// Returns whether the read succeeded.
bool reads_cleanly(const std::function<std::string()>& read) {
  std::string problem;
  try {
    problem = read();
    if (problem.empty()) return true;
    problem = "read succeeded, but " + problem;
  } catch (const srgpt::Error& e) {
    if (std::strstr(e.what(), "out of host memory"))
      FAIL("a small damaged input made the reader allocate more than the test's cap: " << e.what());
    if (std::strlen(e.what()) > 0) return false;
    problem = "an srgpt::Error with an empty message";
  } catch (const std::exception& e) {
    int status = 0;
    char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
    problem = std::string("a ") + (name ? name : typeid(e).name()) + " instead of an srgpt::Error: " + e.what();
    std::free(name);
  } catch (...) {
    problem = "an exception that is not a std::exception";
  }
  FAIL(problem);  // the caller's INFO shows the case
  return false;
}

}  // namespace

// ---------------------------------------------------------------- run configs

namespace {

// Dotted paths of every config section and key, for --set.
std::vector<std::string> config_paths() {
  std::vector<std::string> paths;
  const json defaults = srgpt::config_to_json(srgpt::Config());
  for (const auto& item : defaults.items()) {
    paths.push_back(item.key());
    if (item.value().is_object())
      for (const auto& sub : item.value().items()) paths.push_back(item.key() + "." + sub.key());
  }
  paths.push_back("comment");
  return paths;
}

// A --set argument: a known key or section (sometimes damaged) and a value
// that is JSON, plain text, empty or not UTF-8.
std::string random_override(Mutator& m, const std::vector<std::string>& paths) {
  static const std::vector<std::string> kValues = replacement_values();
  std::string key = paths[m.below(paths.size())];
  if (m.chance(0.1)) key += m.chance(0.5) ? ".x" : "..";
  std::string value;
  switch (m.below(5)) {
    case 0:
    case 1: value = kValues[m.below(kValues.size())]; break;
    case 2: value = "runs/fuzz_*.bin"; break;
    case 3: value = std::string(1 + m.below(3), char(0x80 + m.below(128))); break;  // not UTF-8
    default: value = m.chance(0.5) ? "" : "a=b"; break;
  }
  const std::string assignment = key + "=" + value;
  m.note("--set " + printable(assignment, 80));
  return assignment;
}

}  // namespace

TEST_CASE("fuzz: run configs and --set overrides", "[fuzz][config]") {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  TempDir tmp("fuzz-config");
  const srgpt::Config tiny = srgpt_test::tiny_config(tmp.path() / "data", tmp.path() / "run");
  const std::vector<std::string> bases = {srgpt::config_to_json(tiny).dump(2),
                                          read_file(fs::path(SRGPT_SOURCE_DIR) / "configs" / "demo.json")};
  REQUIRE(!bases[1].empty());
  const std::vector<std::string> paths = config_paths();
  const fs::path file = tmp.path() / "run.json";
  AddressSpaceCap cap(kHeadroom);
  Watchdog watchdog(std::chrono::seconds(60));
  int accepted = 0;
  for (int i = 0; i < iterations(2000); ++i) {
    std::mt19937_64 rng = iteration_rng(seed, i);
    Mutator m(rng);
    std::string text = bases[m.below(bases.size())];
    m.mutate(text, 1 + int(m.below(3)), 0.85);
    std::vector<std::string> overrides;
    while (m.chance(0.3)) overrides.push_back(random_override(m, paths));
    write_file(file, text);
    Case c{"config", seed, i, {}};
    c.add_input("run.json", text);
    const std::string description = c.describe(m);
    INFO(description);
    watchdog.arm(description);
    accepted += reads_cleanly([&]() -> std::string {
      const srgpt::Config config = srgpt::load_config(file.string(), overrides);
      // An accepted config goes into every checkpoint's manifest and is read
      // back from there on resume.
      const json written = srgpt::config_to_json(config);
      const srgpt::Config reread = srgpt::config_from_json(json::parse(written.dump()), "the written config");
      if (srgpt::config_to_json(reread) != written) return "the config reads back differently once written";
      for (int world = 1; world <= 3; ++world) {
        try {
          config.validate_for_world(world);
        } catch (const srgpt::Error&) {
        }
      }
      return "";
    });
  }
  // Mutations that keep a config valid happen too (a changed value within
  // its range); all rejected would mean the inputs never got past parsing.
  CHECK(accepted > 0);
}

// ---------------------------------------------------------------- checkpoints

namespace {

// Checkpoints of one training step of the tiny model, each with the config
// of the run that wrote it.
struct CheckpointSet {
  TempDir tmp{"fuzz-ckpt"};
  std::vector<srgpt::Config> configs;
  std::vector<fs::path> dirs;
  std::vector<std::string> labels;

  CheckpointSet() { srgpt_test::write_markov_shards(tmp.path() / "data", 64, 3000, 600); }

  srgpt::Config config(int k, srgpt::Precision precision, int zero_stage) const {
    srgpt::Config c = srgpt_test::tiny_config(tmp.path() / "data", tmp.path() / ("run" + std::to_string(k)));
    c.train.steps = 1;
    c.optimizer.warmup_steps = 0;
    c.precision = precision;
    c.dist.zero_stage = zero_stage;
    return c;
  }

  void add(const srgpt::Config& c, const std::string& label) {
    const auto latest = srgpt::latest_checkpoint(fs::path(c.out_dir) / "checkpoints");
    REQUIRE(latest);
    configs.push_back(c);
    dirs.push_back(*latest);
    labels.push_back(label);
  }
};

// One per precision mode (their optimizer state differs: bf16 m and v; fp32
// master, m and v; bf16 plus a Kahan compensation; all fp32), alternately
// without sharding (state per tensor) and under ZeRO-1 (one flat shard,
// re-assembled through the plan), trained in this process.
void add_single_process_checkpoints(CheckpointSet& set) {
  const srgpt::Precision precisions[] = {srgpt::Precision::bf16_sr, srgpt::Precision::mixed,
                                         srgpt::Precision::bf16_kahan, srgpt::Precision::fp32};
  for (int k = 0; k < int(std::size(precisions)); ++k) {
    const srgpt::Config c = set.config(k, precisions[k], k % 2);
    srgpt::TrainOptions options = srgpt_test::quiet_options();
    options.single_process = true;
    srgpt::Trainer(c, options).run();
    set.add(c, std::string(srgpt::precision_name(c.precision)) + (k % 2 ? ", ZeRO-1" : ""));
  }
}

// Every listed file has its listed size and holds every listed tensor.
std::string manifest_matches_files(const srgpt::CheckpointReader& reader) {
  for (const json& f : reader.manifest().at("files")) {
    const fs::path path = reader.dir() / f.at("name").get<std::string>();
    const uint64_t size = fs::file_size(path), listed = f.at("bytes").get<uint64_t>();
    if (size != listed)
      return path.string() + " has " + std::to_string(size) + " bytes, the manifest lists " + std::to_string(listed);
    for (const json& t : f.at("tensors"))
      if (t.at("offset").get<uint64_t>() + t.at("bytes").get<uint64_t>() > size)
        return "tensor " + t.at("name").get<std::string>() + " lies outside " + path.string();
  }
  return "";
}

// Damages copies of the set's checkpoints (the manifest, mostly its training
// state, and the binary files) and reads each: the checkpoint reader with a
// full load check, and the trainer's resume path in this process with the
// writing run's config (for a multi-rank checkpoint: a resume on one rank).
void fuzz_checkpoints(const CheckpointSet& set, int iterations) {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  const fs::path dir = set.tmp.path() / "fuzzed" / "step_00000001";
  const fs::path run_dir = set.tmp.path() / "resumed";
  auto resume = [&](size_t k) {
    fs::remove_all(run_dir);
    srgpt::Config config = set.configs[k];
    config.out_dir = run_dir.string();
    srgpt::TrainOptions options = srgpt_test::quiet_options();
    options.single_process = true;
    options.resume_from = dir;
    srgpt::Trainer trainer(config, options);
  };
  // Undamaged, each loads and resumes here: otherwise every damaged case
  // would fail for that reason and test nothing.
  for (size_t k = 0; k < set.dirs.size(); ++k) {
    INFO("undamaged checkpoint (" << set.labels[k] << ")");
    fs::remove_all(dir.parent_path());
    fs::create_directories(dir.parent_path());
    fs::copy(set.dirs[k], dir);
    srgpt::CheckpointReader reader(dir);
    REQUIRE(manifest_matches_files(reader).empty());
    REQUIRE_NOTHROW(srgpt::check_checkpoint_loads(reader));
    REQUIRE_NOTHROW(resume(k));
  }
  AddressSpaceCap cap(kHeadroom);
  Watchdog watchdog(std::chrono::seconds(60));
  for (int i = 0; i < iterations; ++i) {
    std::mt19937_64 rng = iteration_rng(seed, i);
    Mutator m(rng);
    const size_t k = m.below(set.dirs.size());
    fs::remove_all(dir.parent_path());
    fs::create_directories(dir.parent_path());
    fs::copy(set.dirs[k], dir);
    std::vector<std::string> binaries;
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.path().extension() == ".bin") binaries.push_back(entry.path().filename().string());
    std::sort(binaries.begin(), binaries.end());  // directory order is not the same everywhere
    Case c{"checkpoint (" + set.labels[k] + ")", seed, i, {}};
    bool manifest_changed = false, binary_changed = false;
    for (int target = 0, targets = m.chance(0.2) ? 2 : 1; target < targets; ++target) {
      const bool manifest = m.chance(0.6);
      const std::string name = manifest ? "manifest.json" : binaries[m.below(binaries.size())];
      const std::string original = read_file(dir / name);
      std::string mutated = original;
      m.note("in " + name + ":");
      m.focus_on("/state");
      m.mutate(mutated, 1 + int(m.below(2)), manifest ? 0.9 : 0.0);
      write_file(dir / name, mutated);
      if (manifest) c.add_input(name, mutated);
      (manifest ? manifest_changed : binary_changed) |= mutated != original;
    }
    if (binary_changed && m.chance(0.3)) {
      // The manifest made to match the damaged files (sizes, CRC-32s), as a
      // tool rewriting a checkpoint might: the values themselves are then
      // all that stands between the damage and a load.
      const std::string text = read_file(dir / "manifest.json");
      json manifest = nesting_depth(text) > 100 ? json() : json::parse(text, nullptr, false);
      if (manifest.is_object() && manifest.contains("files") && manifest["files"].is_array()) {
        for (json& f : manifest["files"]) {
          const json* name = f.is_object() && f.contains("name") ? &f["name"] : nullptr;
          if (!name || !name->is_string() || !fs::is_regular_file(dir / name->get<std::string>())) continue;
          const std::string bytes = read_file(dir / name->get<std::string>());
          f["bytes"] = bytes.size();
          f["crc32"] = srgpt::crc32(bytes.data(), bytes.size());
        }
        write_file(dir / "manifest.json", manifest.dump(-1, ' ', false, json::error_handler_t::ignore));
        m.note("sizes and CRC-32s in manifest.json updated");
        binary_changed = false;
      }
    }
    const std::string description = c.describe(m);
    INFO(description);
    watchdog.arm(description);
    // A damaged binary file must never load: sizes and CRC-32s catch it.
    const std::string undetected = binary_changed && !manifest_changed ? "a damaged binary file was accepted" : "";
    reads_cleanly([&]() -> std::string {
      srgpt::CheckpointReader reader(dir);
      if (std::string problem = manifest_matches_files(reader); !problem.empty()) return problem;
      srgpt::check_checkpoint_loads(reader);
      return undetected;
    });
    reads_cleanly([&]() -> std::string {
      resume(k);
      return undetected;
    });
  }
}

}  // namespace

TEST_CASE("fuzz: checkpoint manifest and binary files, loading and resuming", "[fuzz][checkpoint]") {
  CheckpointSet set;
  add_single_process_checkpoints(set);
  fuzz_checkpoints(set, iterations(400));
}

// Hidden: ctest runs it under label "mpi" with SRGPT_MPIEXEC set
// (tests/mpi/CMakeLists.txt). Checkpoints written by 2 and 3 ranks under
// ZeRO-2 and -3: one model.bin and an optimizer shard file per rank, which
// the resume path re-assembles through the saved plan.
TEST_CASE("fuzz: multi-rank ZeRO checkpoints", "[.mpi-fuzz]") {
  const std::string mpiexec = srgpt_test::shell_quoted(srgpt_test::mpiexec_from_env());
  CheckpointSet set;
  const struct {
    int ranks, zero_stage;
    srgpt::Precision precision;
  } runs[] = {{2, 2, srgpt::Precision::bf16_sr}, {3, 3, srgpt::Precision::mixed}};
  for (int k = 0; k < int(std::size(runs)); ++k) {
    srgpt::Config c = set.config(k, runs[k].precision, runs[k].zero_stage);
    c.batch.micro_batch = 2;
    c.batch.total_tokens = 32 * runs[k].ranks;
    const fs::path config_file = set.tmp.path() / ("run" + std::to_string(k) + ".json");
    std::ofstream(config_file) << srgpt::config_to_json(c).dump(2);
    const srgpt_test::CommandResult r =
        srgpt_test::run_command("timeout 120 " + mpiexec + " --oversubscribe -np " + std::to_string(runs[k].ranks) +
                                " " + srgpt_test::srgpt_bin() + " train --config " +
                                srgpt_test::shell_quoted(config_file.string()));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    set.add(c, std::to_string(runs[k].ranks) + " ranks, " + srgpt::precision_name(c.precision) + ", ZeRO-" +
                   std::to_string(runs[k].zero_stage));
  }
  fuzz_checkpoints(set, iterations(300));
}

// ---------------------------------------------------------------- token shards

TEST_CASE("fuzz: token shards, header and payload", "[fuzz][data]") {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  TempDir tmp("fuzz-shards");
  // llm.c version 1 (uint16), version 2 (uint32: ids over 65535) and a raw
  // nanoGPT file, with the vocabulary each is read with.
  struct Base {
    std::string name, bytes;
    int vocab;
  };
  std::vector<Base> bases;
  {
    const std::vector<uint32_t> narrow = srgpt_test::markov_tokens(600, 64, 3);
    std::vector<uint32_t> wide = narrow;
    for (size_t i = 0; i < wide.size(); i += 7) wide[i] += 70000;
    srgpt::write_token_shard(tmp.str("v1.bin"), narrow);
    srgpt::write_token_shard(tmp.str("v2.bin"), wide);
    const std::vector<uint16_t> raw(narrow.begin(), narrow.end());
    bases = {{"llm.c v1", read_file(tmp.str("v1.bin")), 64},
             {"llm.c v2", read_file(tmp.str("v2.bin")), 70064},
             {"nanoGPT", std::string(reinterpret_cast<const char*>(raw.data()), raw.size() * 2), 64}};
  }
  const fs::path path = tmp.path() / "shard.bin";
  AddressSpaceCap cap(kHeadroom);
  Watchdog watchdog(std::chrono::seconds(60));
  for (int i = 0; i < iterations(3000); ++i) {
    std::mt19937_64 rng = iteration_rng(seed, i);
    Mutator m(rng);
    const Base& base = bases[m.below(bases.size())];
    std::string bytes = base.bytes;
    if (m.chance(0.5)) {
      // A header field (magic, version, count, a reserved one) set to a
      // value near what is there or to an extreme.
      const size_t field = m.below(4);
      int32_t value;
      std::memcpy(&value, &bytes[4 * field], 4);
      const int64_t options[] = {value + 1, value - 1, int64_t(value) * 2, value / 2,
                                 kInterestingInts[m.below(std::size(kInterestingInts))]};
      value = int32_t(options[m.below(std::size(options))]);
      std::memcpy(&bytes[4 * field], &value, 4);
      m.note("header[" + std::to_string(field) + "] = " + std::to_string(value));
    }
    if (m.chance(0.7)) m.mutate(bytes, 1 + int(m.below(3)), 0.0);
    write_file(path, bytes);
    Case c{"token shard (" + base.name + ")", seed, i, {}};
    c.add_input("shard", bytes.substr(0, 64));
    const std::string description = c.describe(m);
    INFO(description);
    watchdog.arm(description);
    reads_cleanly([&]() -> std::string {
      const srgpt::TokenShard shard(path.string());
      const uint64_t expected =
          (shard.llmc_format() ? 1024 : 0) + uint64_t(shard.size()) * uint64_t(shard.token_bytes());
      if (expected != bytes.size())
        return std::to_string(shard.size()) + " tokens of " + std::to_string(shard.token_bytes()) + " bytes in a " +
               std::to_string(bytes.size()) + "-byte file";
      std::vector<int32_t> tokens(shard.size());
      bool in_vocab = true;
      try {
        shard.copy(0, shard.size(), tokens.data(), base.vocab);
      } catch (const srgpt::Error&) {
        in_vocab = false;  // an id outside the vocabulary
      }
      for (size_t t = 0; in_vocab && t < shard.size(); t += 1 + shard.size() / 16)
        if (shard.at(t) != uint32_t(tokens[t])) return "at() and copy() disagree at token " + std::to_string(t);
      try {
        shard.at(shard.size());
        return "at() past the end returned a token";
      } catch (const srgpt::Error&) {
      }
      // A loader over the shard: a few batches and a seek anywhere.
      srgpt::TokenLoader loader({path.string()}, 2, 8, 0, 1, base.vocab, m.chance(0.5), seed);
      std::vector<int32_t> inputs(16), targets(16);
      for (int b = 0; b < 3; ++b) loader.next_batch(inputs.data(), targets.data());
      try {
        loader.seek({int64_t(m.below(3)), int64_t(m.below(2)), int64_t(m.below(200))});
      } catch (const srgpt::Error&) {
      }
      loader.next_batch(inputs.data(), targets.data());
      return "";
    });
  }
}

// ---------------------------------------------------------------- srgpt import

TEST_CASE("fuzz: safetensors and config.json read by srgpt import", "[fuzz][export]") {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  TempDir tmp("fuzz-import");
  // The tiny model exported as f32 and as bf16.
  const srgpt::ModelConfig model = srgpt_test::tiny_config("data", "run").model;
  const srgpt::Layout layout = srgpt::gpt2_param_layout(model, 1);
  const std::vector<float> weights = srgpt::gpt2_initial_weights(model, layout, 11, 0.02);
  std::vector<fs::path> bases;
  for (srgpt::DType dtype : {srgpt::DType::f32, srgpt::DType::bf16}) {
    bases.push_back(tmp.path() / srgpt::dtype_name(dtype));
    srgpt::export_hf(model, weights, bases.back(), {dtype, ""});
  }
  const fs::path dir = tmp.path() / "fuzzed";
  const fs::path weights_path = dir / "model.safetensors";
  AddressSpaceCap cap(kHeadroom);
  Watchdog watchdog(std::chrono::seconds(60));
  int imported = 0;
  for (int i = 0; i < iterations(800); ++i) {
    std::mt19937_64 rng = iteration_rng(seed, i);
    Mutator m(rng);
    const fs::path& base = bases[m.below(bases.size())];
    fs::remove_all(dir);
    fs::copy(base, dir);
    Case c{"import (" + base.filename().string() + ")", seed, i, {}};
    if (m.chance(0.35)) {
      std::string config = read_file(dir / "config.json");
      m.note("in config.json:");
      m.mutate(config, 1 + int(m.below(3)), 0.8);
      write_file(dir / "config.json", config);
      c.add_input("config.json", config);
    }
    if (m.chance(0.75)) {
      std::string file = read_file(weights_path);
      uint64_t length = 0;
      std::memcpy(&length, file.data(), 8);
      if (m.chance(0.6)) {
        // The header as JSON, its length field then updated (mostly), so
        // that most mutants parse and reach the checks of the entries.
        std::string header = file.substr(8, length), data = file.substr(8 + length);
        m.note("in the safetensors header:");
        m.mutate(header, 1 + int(m.below(3)), 0.85);
        if (m.chance(0.15)) {
          m.note("in the data section:");
          m.mutate(data, 1, 0.0);
        }
        const uint64_t new_length = m.chance(0.9) ? header.size() : length;
        file = std::string(reinterpret_cast<const char*>(&new_length), 8) + header + data;
      } else {
        m.note("in model.safetensors:");
        m.mutate(file, 1 + int(m.below(3)), 0.0);
      }
      write_file(weights_path, file);
      c.add_input("model.safetensors", file.substr(0, 600));
    }
    const std::string description = c.describe(m);
    INFO(description);
    watchdog.arm(description);
    reads_cleanly([&]() -> std::string {
      const srgpt::SafetensorsReader reader(weights_path);
      const std::string file = read_file(weights_path);
      uint64_t length = 0;
      std::memcpy(&length, file.data(), 8);
      for (const srgpt::SafetensorsEntry& e : reader.tensors()) {
        if (e.end < e.begin || e.end > file.size() - 8 - length)
          return "tensor '" + e.name + "' lies outside the data section";
        if (reader.read_bytes(e).size() != e.end - e.begin) return "tensor '" + e.name + "' reads the wrong size";
      }
      return "";
    });
    imported += reads_cleanly([&]() -> std::string {
      const srgpt::HfModel hf = srgpt::read_hf_model(dir);
      if (hf.weights.size() != srgpt::gpt2_param_layout(hf.model, 1).total())
        return "the weights do not fill the model's layout";
      return "";
    });
  }
  CHECK(imported > 0);
}

// ---------------------------------------------------------------- GPT-2 tokenizer files

namespace {

// A small vocabulary cut from the real GPT-2 files: the 256 byte tokens,
// the first `merges` merges of vocab.bpe and <|endoftext|>, renumbered
// 0..n-1 in GPT-2's order. Valid by construction (GPT-2's merges use only
// bytes and earlier merges), and quick to load many times.
void write_small_gpt2_vocabulary(const fs::path& dir, size_t merges) {
  const fs::path real = fs::path(SRGPT_SOURCE_DIR) / srgpt::kDefaultGpt2TokenizerDir;
  REQUIRE(fs::exists(real / "encoder.json"));
  const json encoder = json::parse(read_file(real / "encoder.json"));
  std::istringstream lines(read_file(real / "vocab.bpe"));
  std::string merge_text, line;
  std::set<std::string> keep;
  for (const auto& item : encoder.items())
    if (item.value().get<int>() < 256 || item.key() == srgpt::Gpt2Tokenizer::kEndOfText) keep.insert(item.key());
  for (size_t n = 0; n < merges && std::getline(lines, line);) {
    merge_text += line + "\n";
    if (line.rfind("#version", 0) == 0) continue;
    const size_t space = line.find(' ');
    keep.insert(line.substr(0, space) + line.substr(space + 1));
    ++n;
  }
  std::vector<std::pair<int, std::string>> by_id;
  for (const std::string& key : keep) by_id.emplace_back(encoder.at(key).get<int>(), key);
  std::sort(by_id.begin(), by_id.end());
  json small = json::object();
  for (size_t id = 0; id < by_id.size(); ++id) small[by_id[id].second] = id;
  fs::create_directories(dir);
  write_file(dir / "encoder.json", small.dump());
  write_file(dir / "vocab.bpe", merge_text);
}

// Mutations of vocab.bpe by line: delete, duplicate, swap, or a made-up merge.
void mutate_merge_lines(std::string& text, Mutator& m) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  if (lines.size() < 2) return m.byte_mutation(text);
  const size_t a = m.below(lines.size()), b = m.below(lines.size());
  switch (m.below(5)) {
    case 0: lines.erase(lines.begin() + long(a)); m.note("delete line " + std::to_string(a + 1)); break;
    case 1:
      lines.insert(lines.begin() + long(b), lines[a]);
      m.note("copy line " + std::to_string(a + 1) + " before " + std::to_string(b + 1));
      break;
    case 2:
      std::swap(lines[a], lines[b]);
      m.note("swap lines " + std::to_string(a + 1) + ", " + std::to_string(b + 1));
      break;
    case 3: {
      const std::string left = lines[a].substr(0, lines[a].find(' ')), right = lines[b].substr(lines[b].find(' ') + 1);
      lines.insert(lines.begin() + long(m.below(lines.size())), left + " " + right);
      m.note("insert merge " + printable(left + " " + right, 40));
      break;
    }
    default:
      lines[a] += m.chance(0.5) ? "\r" : " ";
      m.note("append a space or CR to line " + std::to_string(a + 1));
      break;
  }
  text.clear();
  for (const std::string& line : lines) text += line + "\n";
}

// Loads a GPT-2 tokenizer from (mutated) files; when that succeeds, it must
// encode any bytes into ids of its vocabulary and decode them back exactly.
std::string load_and_round_trip(const fs::path& encoder, const fs::path& merges, Mutator& m) {
  srgpt::Gpt2Tokenizer tokenizer(encoder.string(), merges.string(), m.chance(0.5) ? 0 : 64);
  const uint32_t vocab = uint32_t(tokenizer.vocab_size());
  if (tokenizer.eot_token() >= vocab) return "<|endoftext|> is outside the vocabulary";
  std::string text = "Hello world, it's 2024!\n\tcaf\xC3\xA9 <|endoftext|> ";
  for (int k = 0; k < 64; ++k) text += char(m.below(256));
  for (bool special : {false, true}) {
    const std::vector<uint32_t> ids = tokenizer.encode(text, special);
    for (uint32_t id : ids)
      if (id >= vocab)
        return "encode gave id " + std::to_string(id) + " of a " + std::to_string(vocab) + "-token vocabulary";
    if (tokenizer.decode(ids) != text) return "decode(encode(text)) differs from the text";
  }
  try {
    tokenizer.token_bytes(vocab);
    return "token_bytes accepted an id past the vocabulary";
  } catch (const srgpt::Error&) {
  }
  return "";
}

}  // namespace

TEST_CASE("fuzz: GPT-2 tokenizer files encoder.json and vocab.bpe", "[fuzz][tokenizer]") {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  TempDir tmp("fuzz-tokenizer");
  write_small_gpt2_vocabulary(tmp.path() / "small", 300);
  const fs::path full = fs::path(SRGPT_SOURCE_DIR) / srgpt::kDefaultGpt2TokenizerDir;
  // Many iterations on the small vocabulary, JSON-aware; a few on the real
  // 50257-token files, by bytes and lines (a JSON edit of 50k keys is slow).
  struct Base {
    std::string name, encoder, merges;
    int iterations;
    double json_share;
  };
  const Base bases[] = {{"small vocabulary", read_file(tmp.path() / "small" / "encoder.json"),
                         read_file(tmp.path() / "small" / "vocab.bpe"), iterations(800), 0.7},
                        {"GPT-2 files", read_file(full / "encoder.json"), read_file(full / "vocab.bpe"),
                         iterations(4), 0.0}};
  const fs::path encoder_path = tmp.path() / "encoder.json", merges_path = tmp.path() / "vocab.bpe";
  AddressSpaceCap cap(kHeadroom);
  Watchdog watchdog(std::chrono::seconds(60));
  for (const Base& base : bases) {
    int loaded = 0;
    for (int i = 0; i < base.iterations; ++i) {
      std::mt19937_64 rng = iteration_rng(seed, i);
      Mutator m(rng);
      std::string encoder = base.encoder, merges = base.merges;
      const bool both = m.chance(0.2), encoder_first = m.chance(0.5);
      Case c{"tokenizer (" + base.name + ")", seed, i, {}};
      if (both || encoder_first) {
        m.note("in encoder.json:");
        m.mutate(encoder, 1 + int(m.below(3)), base.json_share);
        c.add_input("encoder.json", encoder);
      }
      if (both || !encoder_first) {
        m.note("in vocab.bpe:");
        for (int k = 0, n = 1 + int(m.below(3)); k < n; ++k) {
          if (m.chance(0.6)) {
            mutate_merge_lines(merges, m);
          } else {
            m.byte_mutation(merges);
          }
        }
        c.add_input("vocab.bpe", merges);
      }
      write_file(encoder_path, encoder);
      write_file(merges_path, merges);
      const std::string description = c.describe(m);
      INFO(description);
      watchdog.arm(description);
      loaded += reads_cleanly([&] { return load_and_round_trip(encoder_path, merges_path, m); });
    }
    // Some mutants load (a CR at a line's end, a blank line, reordered
    // JSON keys), so the round trip is exercised too.
    if (base.iterations >= 100) CHECK(loaded > 0);
  }
}

// ---------------------------------------------------------------- srgpt prepare

TEST_CASE("fuzz: prepare's summary.json and input text", "[fuzz][prepare]") {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  TempDir tmp("fuzz-prepare");
  write_small_gpt2_vocabulary(tmp.path() / "vocab", 300);
  std::string text;
  for (int k = 0; k < 60; ++k)
    text += "Line " + std::to_string(k) + " of the text, with some words.\n" + (k % 7 ? "" : "\n");
  fs::create_directories(tmp.path() / "in");
  write_file(tmp.path() / "in" / "a.txt", text);
  write_file(tmp.path() / "in" / "b.txt", "A second file.\n\nIts second paragraph.\n");
  srgpt::PrepareOptions options;
  options.inputs = {tmp.str("in/*.txt")};
  options.tokenizer = "byte";
  options.out_dir = tmp.str("out");
  options.split = srgpt::DocumentSplit::Lines;
  options.val_fraction = 0.2;
  options.shard_tokens = 1000;
  options.show_progress = false;
  srgpt::prepare_dataset(options);
  const fs::path summary_path = tmp.path() / "out" / "summary.json";
  const std::string base_summary = read_file(summary_path);
  AddressSpaceCap cap(kHeadroom);
  Watchdog watchdog(std::chrono::seconds(60));

  SECTION("summary.json as eval reads it") {
    for (int i = 0; i < iterations(1500); ++i) {
      std::mt19937_64 rng = iteration_rng(seed, i);
      Mutator m(rng);
      std::string summary = base_summary;
      m.mutate(summary, 1 + int(m.below(3)), 0.8);
      write_file(summary_path, summary);
      Case c{"prepare summary.json", seed, i, {}};
      c.add_input("summary.json", summary);
      const std::string description = c.describe(m);
      INFO(description);
      watchdog.arm(description);
      reads_cleanly([&]() -> std::string {
        srgpt::read_prepare_summary(summary_path.string());
        srgpt::prepared_split({tmp.str("out/train_000000.bin")});
        return "";
      });
    }
  }
  SECTION("any input bytes") {
    for (int i = 0; i < iterations(80); ++i) {
      std::mt19937_64 rng = iteration_rng(seed, i);
      Mutator m(rng);
      std::string input = text;
      m.mutate(input, 1 + int(m.below(6)), 0.0);
      write_file(tmp.path() / "in" / "a.txt", input);
      srgpt::PrepareOptions o = options;
      if (m.chance(0.5)) {
        o.tokenizer = "gpt2";
        o.tokenizer_dir = tmp.str("vocab");
      }
      o.split = srgpt::DocumentSplit(m.below(3));
      Case c{"prepare input (" + o.tokenizer + ")", seed, i, {}};
      c.add_input("a.txt", input);
      const std::string description = c.describe(m);
      INFO(description);
      watchdog.arm(description);
      reads_cleanly([&]() -> std::string {
        const srgpt::PrepareSummary summary = srgpt::prepare_dataset(o);
        if (srgpt::to_json(srgpt::read_prepare_summary(summary_path.string())) != srgpt::to_json(summary))
          return "summary.json differs from the summary prepare returned";
        int64_t tokens = 0;
        for (const srgpt::SplitSummary* split : {&summary.train, &summary.val})
          for (const srgpt::ShardSummary& shard : split->shards)
            tokens += int64_t(srgpt::TokenShard(tmp.str("out/" + shard.file)).size());
        if (tokens != summary.train.tokens + summary.val.tokens)
          return "the shards hold other token counts than summary.json";
        return "";
      });
    }
  }
}

// ---------------------------------------------------------------- command lines

namespace {

// A command line as (flag, value) pairs; an empty flag is a positional
// argument, an empty value... is an empty value: `absent` marks none.
struct Argument {
  std::string flag, value;
  bool has_value = true;
};

// Damages a valid command line: a value replaced, a flag dropped, repeated,
// left without its value or taken from another subcommand, two arguments
// swapped, a stray word.
void mutate_command_line(Mutator& m, std::vector<Argument>& args, const std::vector<std::string>& values,
                         const std::vector<std::string>& all_flags) {
  const std::string& value = values[m.below(values.size())];
  const size_t at = m.below(args.size());
  switch (m.below(7)) {
    case 0:
    case 1:
      if (!args[at].has_value) break;
      args[at].value = value;
      m.note("value of argument " + std::to_string(at) + " replaced by " + printable(value, 80));
      break;
    case 2:
      args.erase(args.begin() + long(at));
      m.note("argument " + std::to_string(at) + " dropped");
      break;
    case 3:
      args.push_back(args[at]);
      m.note("argument " + std::to_string(at) + " repeated");
      break;
    case 4:
      args[at].has_value = false;
      m.note("argument " + std::to_string(at) + " without its value");
      break;
    case 5:
      args.insert(args.begin() + long(at), Argument{all_flags[m.below(all_flags.size())], value});
      m.note("flag " + args[at].flag + " " + printable(value, 80) + " inserted at " + std::to_string(at));
      break;
    default:
      std::swap(args[at], args[m.below(args.size())]);
      m.note("two arguments swapped");
      break;
  }
}

}  // namespace

// The binary's own parsing (CLI11, then srgpt's checks of flag values), on
// damaged versions of valid command lines of every subcommand, with the
// run's real files: values replaced by paths to nothing or to the wrong
// kind of file, numbers past each type's range, non-finite, fractional,
// empty or non-UTF-8 text; flags dropped, repeated or without their value.
// Every command must end within a minute (the inputs are tiny) with status
// 0, or with a message and a status below 128; never a signal, an uncaught
// exception or an nlohmann error that escaped a reader.
TEST_CASE("fuzz: command lines", "[fuzz][cli]") {
  const uint32_t seed = fuzz_seed();
  INFO("seed " << seed << " (replay: SRGPT_FUZZ_SEED=" << seed << ")");
  CheckpointSet set;
  srgpt::Config c = set.config(0, srgpt::Precision::bf16_sr, 0);
  c.model.vocab_size = 256;  // the byte tokenizer's, for sample
  {
    srgpt::TrainOptions options = srgpt_test::quiet_options();
    options.single_process = true;
    srgpt::Trainer(c, options).run();
  }
  set.add(c, "bf16-sr");
  const fs::path dir = set.tmp.path();
  const std::string config_file = (dir / "run.json").string(), ckpt = set.dirs[0].string();
  write_file(config_file, srgpt::config_to_json(c).dump(2));
  write_file(dir / "text.txt", "The quick brown fox.\n\nJumps over the lazy dog.\n");
  const std::string bin = srgpt_test::srgpt_bin();
  const srgpt_test::CommandResult exported = srgpt_test::run_command(
      bin + " export --checkpoint " + srgpt_test::shell_quoted(ckpt) + " --out " +
      srgpt_test::shell_quoted((dir / "hf").string()));
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);

  const std::string tokenizer_dir = (fs::path(SRGPT_SOURCE_DIR) / srgpt::kDefaultGpt2TokenizerDir).string();
  // Valid command lines, one per subcommand (train resumes a finished run).
  const std::vector<std::vector<Argument>> valid = {
      {{"", "train"}, {"--config", config_file}, {"--resume", "", false}, {"--set", "train.steps=2"},
       {"--stop-after", "2"}},
      {{"", "eval"}, {"--checkpoint", ckpt}, {"--data", c.data.val}, {"--max-tokens", "64"}, {"--batch", "2"},
       {"--seq-len", "8"}},
      {{"", "info"}, {"", ckpt}, {"--json", "", false}, {"--verify", "", false}},
      {{"", "prepare"}, {"--input", (dir / "text.txt").string()}, {"--tokenizer", "gpt2"},
       {"--tokenizer-dir", tokenizer_dir}, {"--out", "prepared"}, {"--split", "paragraphs"},
       {"--val-fraction", "0.5"}, {"--shard-tokens", "7"}, {"--seed", "3"}, {"--no-progress", "", false}},
      {{"", "sample"}, {"--checkpoint", ckpt}, {"--prompt", "\x01\x02"}, {"--tokens", "4"}, {"--temperature", "0.8"},
       {"--top-k", "5"}, {"--seed", "2"}, {"--tokenizer", "byte"}},
      {{"", "export"}, {"--checkpoint", ckpt}, {"--out", "exported"}, {"--format", "hf"}, {"--dtype", "f32"}},
      {{"", "import"}, {"--hf", (dir / "hf").string()}, {"--out", "imported"}, {"--precision", "mixed"},
       {"--set", "optimizer.lr=0.01"}},
  };
  std::vector<std::string> all_flags;
  for (const auto& line : valid)
    for (const Argument& a : line)
      if (!a.flag.empty()) all_flags.push_back(a.flag);
  all_flags.insert(all_flags.end(), {"-c", "--resume-from", "--help", "-h", "--", "-"});
  const std::vector<std::string> values = {
      // real inputs, and paths to nothing or to the wrong kind of file
      config_file, ckpt, c.out_dir, c.data.train, (dir / "text.txt").string(), (dir / "hf").string(), tokenizer_dir,
      (dir / "data").string(), "out", "nope/x.json", "/", "/dev/null", "[", "*",
      // numbers and what is not one
      "0", "-1", "1", "3", "2147483648", "9223372036854775808", "-9223372036854775809", "1e400", "nan", "inf",
      "-inf", "1.5", "0x10", "abc", "", " ", "\xff\xfe", "\xc3", "-", "--", "=",
      // choices and --set assignments
      "gpt2", "byte", "lines", "files", "hf", "bf16", "f32", "fp32", "bf16-sr", "bf16-kahan", "train.steps=3",
      "model.n_layer=abc", "out_dir=elsewhere", "x=", "=y", "a.b.c.d=1", "optimizer.lr=-1"};
  int succeeded = 0;
  for (int i = 0; i < iterations(40); ++i) {
    std::mt19937_64 rng = iteration_rng(seed, i);
    Mutator m(rng);
    const size_t command = m.below(valid.size());
    std::vector<Argument> args = valid[command];
    for (int n = 0, count = int(m.below(3)); n < count && !args.empty(); ++n)
      mutate_command_line(m, args, values, all_flags);
    std::string line;
    for (const Argument& a : args) {
      if (!a.flag.empty()) line += " " + srgpt_test::shell_quoted(a.flag);
      if (a.has_value) line += " " + srgpt_test::shell_quoted(a.value);
    }
    m.note("srgpt" + printable(line, 600));
    // In the temporary directory, so relative output paths land there.
    const std::string cmd = "cd " + srgpt_test::shell_quoted(dir.string()) + " && timeout 60 env OMP_NUM_THREADS=1 " +
                            bin + line;
    const srgpt_test::CommandResult r = srgpt_test::run_command(cmd);
    const std::string description = Case{"command line", seed, i, {}}.describe(m);
    INFO(description << "\n  status " << r.exit_code << ", output:\n" << printable(r.output, 3000));
    succeeded += r.exit_code == 0;
    CHECK(r.exit_code != 124);  // `timeout`: a hang
    CHECK(r.exit_code < 128);   // a signal
    if (r.exit_code != 0) CHECK_FALSE(r.output.empty());
    for (const char* escaped : {"terminate called", "unexpected JSON content", "std::", "basic_string", "stoi",
                                "stoll", "stod", "vector::", "AddressSanitizer", "runtime error"})
      CHECK_FALSE(contains(r.output, escaped));
  }
  // Unchanged and harmlessly changed lines succeed: the damaged ones did
  // not all fail for one reason unrelated to the damage.
  CHECK(succeeded > 0);
}
