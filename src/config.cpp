#include "srgpt/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>
#include <limits>
#include <optional>
#include <sstream>

#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/tokenizer.h"

namespace srgpt {

using json = nlohmann::json;
// The schema keeps keys in declaration order so error messages list them in
// the same order as docs/config.md.
using ordered_json = nlohmann::ordered_json;

const char* lr_decay_name(LrDecay d) {
  switch (d) {
    case LrDecay::cosine: return "cosine";
    case LrDecay::linear: return "linear";
    case LrDecay::constant: return "constant";
  }
  return "?";
}

const char* device_choice_name(DeviceChoice d) {
  switch (d) {
    case DeviceChoice::auto_select: return "auto";
    case DeviceChoice::cpu: return "cpu";
    case DeviceChoice::cuda: return "cuda";
  }
  return "?";
}

const char* communicator_choice_name(CommunicatorChoice c) {
  switch (c) {
    case CommunicatorChoice::auto_select: return "auto";
    case CommunicatorChoice::nccl: return "nccl";
    case CommunicatorChoice::mpi: return "mpi";
  }
  return "?";
}

const char* nonfinite_policy_name(NonFinitePolicy p) {
  switch (p) {
    case NonFinitePolicy::stop: return "stop";
    case NonFinitePolicy::skip: return "skip";
  }
  return "?";
}

const char* grad_reduce_choice_name(GradReduceChoice g) {
  switch (g) {
    case GradReduceChoice::auto_select: return "auto";
    case GradReduceChoice::bf16: return "bf16";
    case GradReduceChoice::fp32: return "fp32";
  }
  return "?";
}

DType DistConfig::grad_dtype(Precision precision) const {
  switch (grad_reduce_dtype) {
    case GradReduceChoice::auto_select: return compute_dtype(precision);
    case GradReduceChoice::bf16: return DType::bf16;
    case GradReduceChoice::fp32: return DType::f32;
  }
  return compute_dtype(precision);
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::none: return "none";
    case Recompute::gelu: return "gelu";
    case Recompute::layernorm: return "layernorm";
    case Recompute::all: return "all";
  }
  return "?";
}

const char* layernorm_backward_from_name(LayerNormBackwardFrom f) {
  switch (f) {
    case LayerNormBackwardFrom::input: return "input";
    case LayerNormBackwardFrom::output: return "output";
  }
  return "?";
}

namespace {

constexpr uint64_t kIntFieldMax = uint64_t(std::numeric_limits<int>::max());
constexpr uint64_t kInt64FieldMax = uint64_t(std::numeric_limits<int64_t>::max());
constexpr uint64_t kUint64FieldMax = std::numeric_limits<uint64_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPi = 3.14159265358979323846;

struct RealRange {
  double lo;
  bool lo_inclusive;
  double hi;  // kInf: unbounded
  bool hi_inclusive;

  bool contains(double x) const {
    bool above = lo_inclusive ? x >= lo : x > lo;
    bool below = hi == kInf || (hi_inclusive ? x <= hi : x < hi);
    return above && below;
  }
  std::string describe() const {
    if (hi == kInf) return fmt::format("a number {} {}", lo_inclusive ? ">=" : ">", lo);
    return fmt::format("a number in {}{}, {}{}", lo_inclusive ? '[' : '(', lo, hi, hi_inclusive ? ']' : ')');
  }
};
constexpr RealRange kPositive{0, false, kInf, false};
constexpr RealRange kNonNegative{0, true, kInf, false};
constexpr RealRange kUnitHalfOpen{0, true, 1, false};
constexpr RealRange kUnitClosed{0, true, 1, true};
// The update adds eps in fp32: below about 1e-38 it would be 0 there, and a
// parameter whose gradients are all zero would get 0/0.
constexpr RealRange kAdamEps{1e-30, true, 1, true};
// Standard deviations far above 1 overflow the first forward pass.
constexpr RealRange kInitStd{0, false, 1, true};
// Far above any accelerator's (an H100's dense bf16 peak is about 1000).
constexpr RealRange kPeakTflops{0, true, 1e6, true};

enum class TextRule { any, non_empty };

std::string describe_integers(uint64_t lo, uint64_t hi) {
  if (hi == kInt64FieldMax) return fmt::format("an integer in [{}, 2^63 - 1]", lo);
  return fmt::format("an integer in [{}, {}]", lo, hi);
}

template <typename Items>
std::string join(const Items& items, const char* separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

std::string json_pointer_of(const std::string& dotted_path) {
  std::string pointer = "/" + dotted_path;
  std::replace(pointer.begin(), pointer.end(), '.', '/');
  return pointer;
}

std::vector<std::string> split_dotted(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

// A value as written, short enough for one line of an error message (JSON
// cannot spell inf or nan, so dump() would print them as null; bytes that
// are not UTF-8, from a command-line flag, show as U+FFFD).
std::string brief(const json& v) {
  if (v.is_number_float() && !std::isfinite(v.get<double>())) return fmt::format("{}", v.get<double>());
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 60;
  return text.size() <= kMax ? text : text.substr(0, kMax) + "...";
}

std::string describe_kind(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: {
      json as_number = json::parse(v.get<std::string>(), nullptr, false);
      if (!as_number.is_discarded() && as_number.is_number()) return "a string (write numbers without quotes)";
      return "a string";
    }
    case json::value_t::number_float: {
      const double x = v.get<double>();
      if (!std::isfinite(x)) return "a non-finite number";
      // 1e3 and 2.0 are whole, but JSON has them as floating-point numbers.
      return x == std::floor(x) ? "a number in floating-point notation" : "a fractional number";
    }
    default: return "a number";
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// `key` is not in the section `section_node` (at `section_path`, "" for the
// top level): say which keys are, and suggest a near miss.
std::string unknown_key_message(const std::string& key, const std::string& section_path,
                                const ordered_json& section_node) {
  std::vector<std::string> allowed;
  std::string closest;
  size_t closest_distance = 3;  // suggest only typos of one or two characters
  for (const auto& item : section_node.items()) {
    allowed.push_back(item.key());
    size_t d = edit_distance(key, item.key());
    if (d < closest_distance) {
      closest_distance = d;
      closest = item.key();
    }
  }
  std::string where = section_path.empty() ? "at the top level" : fmt::format("in '{}'", section_path);
  std::string message = fmt::format("unknown key '{}'; allowed keys {}: {}", dotted_key(section_path, key), where,
                                    join(allowed, ", "));
  if (!closest.empty()) message += fmt::format(" (did you mean '{}'?)", dotted_key(section_path, closest));
  return message;
}

// Every key of the document, in documentation order, with its constraint.
// The schema builder, the reader and the writer all walk this one list, so a
// new key is added in exactly one place.
template <typename Visitor, typename C>
void visit_config(Visitor& v, C& c) {
  v.annotation("comment");
  v.integer("model.vocab_size", c.model.vocab_size, 1, uint64_t(kMaxVocabSize));
  v.integer("model.max_seq_len", c.model.max_seq_len, 1, kIntFieldMax);
  v.integer("model.n_layer", c.model.n_layer, 1, uint64_t(kMaxLayers));
  v.integer("model.n_head", c.model.n_head, 1, kIntFieldMax);
  v.integer("model.d_model", c.model.d_model, 1, kIntFieldMax);
  v.choice("precision", c.precision, kPrecisions, precision_name);
  v.choice("device", c.device, {DeviceChoice::auto_select, DeviceChoice::cpu, DeviceChoice::cuda},
           device_choice_name);
  v.real("optimizer.lr", c.optimizer.lr, kPositive);
  v.real("optimizer.beta1", c.optimizer.beta1, kUnitHalfOpen);
  v.real("optimizer.beta2", c.optimizer.beta2, kUnitHalfOpen);
  v.real("optimizer.eps", c.optimizer.eps, kAdamEps);
  v.real("optimizer.weight_decay", c.optimizer.weight_decay, kNonNegative);
  v.real("optimizer.grad_clip", c.optimizer.grad_clip, kNonNegative);
  v.integer("optimizer.warmup_steps", c.optimizer.warmup_steps, 0, kInt64FieldMax);
  v.choice("optimizer.decay", c.optimizer.decay, {LrDecay::cosine, LrDecay::linear, LrDecay::constant},
           lr_decay_name);
  v.real("optimizer.min_lr_ratio", c.optimizer.min_lr_ratio, kUnitClosed);
  v.integer("batch.micro_batch", c.batch.micro_batch, 1, kIntFieldMax);
  v.integer("batch.seq_len", c.batch.seq_len, 1, kIntFieldMax);
  v.integer("batch.total_tokens", c.batch.total_tokens, 1, kInt64FieldMax);
  v.text("data.train", c.data.train, TextRule::any);
  v.text("data.val", c.data.val, TextRule::any);
  v.integer("train.steps", c.train.steps, 1, kInt64FieldMax);
  v.integer("train.eval_every", c.train.eval_every, 0, kInt64FieldMax);
  v.integer("train.eval_tokens", c.train.eval_tokens, 0, kInt64FieldMax);
  v.integer("train.log_every", c.train.log_every, 1, kInt64FieldMax);
  v.integer("train.seed", c.train.seed, 0, kUint64FieldMax);
  v.choice("train.on_nonfinite", c.train.on_nonfinite, {NonFinitePolicy::stop, NonFinitePolicy::skip},
           nonfinite_policy_name);
  v.real("train.init_std", c.train.init_std, kInitStd);
  v.choice("train.recompute", c.train.recompute,
           {Recompute::none, Recompute::gelu, Recompute::layernorm, Recompute::all}, recompute_name);
  v.integer("train.lm_head_chunks", c.train.lm_head_chunks, 1, kIntFieldMax);
  v.choice("train.layernorm_backward_from", c.train.layernorm_backward_from,
           {LayerNormBackwardFrom::input, LayerNormBackwardFrom::output}, layernorm_backward_from_name);
  v.real("train.mfu_peak_tflops", c.train.mfu_peak_tflops, kPeakTflops);
  v.integer("checkpoint.every", c.checkpoint.every, 0, kInt64FieldMax);
  v.integer("checkpoint.keep", c.checkpoint.keep, 1, kIntFieldMax);
  v.integer("dist.zero_stage", c.dist.zero_stage, 0, 3);
  v.choice("dist.communicator", c.dist.communicator,
           {CommunicatorChoice::auto_select, CommunicatorChoice::nccl, CommunicatorChoice::mpi},
           communicator_choice_name);
  v.choice("dist.grad_reduce_dtype", c.dist.grad_reduce_dtype,
           {GradReduceChoice::auto_select, GradReduceChoice::bf16, GradReduceChoice::fp32}, grad_reduce_choice_name);
  v.boolean("dist.overlap_comm", c.dist.overlap_comm);
  v.text("out_dir", c.out_dir, TextRule::non_empty);
}

// Builds the tree of known keys: sections are objects, keys are booleans,
// true where the value is a string (a path, a name, a choice).
struct SchemaBuilder {
  ordered_json tree = ordered_json::object();

  void add(const char* path, bool string_valued) {
    tree[ordered_json::json_pointer(json_pointer_of(path))] = string_valued;
  }
  void annotation(const char* path) { add(path, true); }
  template <typename T>
  void integer(const char* path, T&, uint64_t, uint64_t) { add(path, false); }
  void real(const char* path, double&, RealRange) { add(path, false); }
  void text(const char* path, std::string&, TextRule) { add(path, true); }
  void boolean(const char* path, bool&) { add(path, false); }
  template <typename Field, typename E>
  void choice(const char* path, Field&, const std::vector<E>&, const char* (*)(E)) { add(path, true); }
};

const ordered_json& schema() {
  static const ordered_json tree = [] {
    SchemaBuilder builder;
    Config config;
    visit_config(builder, config);
    return builder.tree;
  }();
  return tree;
}

// Reports keys that are not in the schema and sections that are not objects.
void check_known_keys(const json& doc, const ordered_json& section, const std::string& section_path,
                      std::vector<std::string>& problems) {
  for (const auto& item : doc.items()) {
    auto known = section.find(item.key());
    if (known == section.end()) {
      problems.push_back(unknown_key_message(item.key(), section_path, section));
      continue;
    }
    if (!known->is_object()) continue;  // a value: its type is checked when it is read
    std::string path = dotted_key(section_path, item.key());
    if (!item.value().is_object()) {
      std::vector<std::string> keys;
      for (const auto& sub : known->items()) keys.push_back(sub.key());
      problems.push_back(fmt::format("{} = {}: expected an object with keys {}, found {}", path,
                                     brief(item.value()), join(keys, ", "), describe_kind(item.value())));
      continue;
    }
    check_known_keys(item.value(), *known, path, problems);
  }
}

// Reads the keys present in a document into a Config; absent keys keep their
// defaults. Every problem is collected so that one run reports them all.
struct Reader {
  const json& doc;
  std::vector<std::string>& problems;

  const json* find(const char* path) const {
    const json* node = &doc;
    for (const std::string& part : split_dotted(path)) {
      if (!node->is_object()) return nullptr;
      auto it = node->find(part);
      if (it == node->end()) return nullptr;
      node = &*it;
    }
    return node;
  }
  void wrong_kind(const char* path, const json& v, const std::string& allowed) {
    problems.push_back(fmt::format("{} = {}: expected {}, found {}", path, brief(v), allowed, describe_kind(v)));
  }
  void out_of_range(const char* path, const json& v, const std::string& allowed) {
    problems.push_back(fmt::format("{} = {} is out of range; allowed: {}", path, brief(v), allowed));
  }

  void annotation(const char* path) {
    const json* v = find(path);
    if (v && !v->is_string()) wrong_kind(path, *v, "a string (ignored; for notes)");
  }

  template <typename T>
  void integer(const char* path, T& field, uint64_t lo, uint64_t hi) {
    const json* v = find(path);
    if (!v) return;
    std::string allowed = describe_integers(lo, hi);
    bool negative = false;
    uint64_t magnitude = 0;
    if (v->is_number_unsigned()) {
      magnitude = v->get<uint64_t>();
    } else if (v->is_number_integer()) {
      int64_t n = v->get<int64_t>();
      negative = n < 0;
      magnitude = negative ? uint64_t(-(n + 1)) + 1 : uint64_t(n);
    } else if (v->is_number_float()) {
      // Integral values written as floats (5e5) are accepted; fractions are not.
      double x = v->get<double>();
      if (!std::isfinite(x) || std::floor(x) != x) return wrong_kind(path, *v, allowed);
      if (std::fabs(x) >= 18446744073709551616.0) return out_of_range(path, *v, allowed);
      negative = x < 0;
      magnitude = uint64_t(std::fabs(x));
    } else {
      return wrong_kind(path, *v, allowed);
    }
    if ((negative && magnitude != 0) || magnitude < lo || magnitude > hi) return out_of_range(path, *v, allowed);
    field = T(magnitude);
  }

  void real(const char* path, double& field, RealRange range) {
    const json* v = find(path);
    if (!v) return;
    std::string allowed = range.describe();
    if (!v->is_number()) return wrong_kind(path, *v, allowed);
    double x = v->get<double>();
    if (!std::isfinite(x) || !range.contains(x)) return out_of_range(path, *v, allowed);
    field = x;
  }

  void text(const char* path, std::string& field, TextRule rule) {
    const json* v = find(path);
    if (!v) return;
    const char* allowed = rule == TextRule::non_empty ? "a non-empty string" : "a string";
    if (!v->is_string()) return wrong_kind(path, *v, allowed);
    if (rule == TextRule::non_empty && v->get<std::string>().empty()) return out_of_range(path, *v, allowed);
    // Paths end at a NUL byte: the rest would be silently dropped.
    if (v->get<std::string>().find('\0') != std::string::npos) {
      problems.push_back(fmt::format("{} = {}: contains a NUL character (\\u0000); allowed: {} without one", path,
                                     brief(*v), allowed));
      return;
    }
    field = v->get<std::string>();
  }

  void boolean(const char* path, bool& field) {
    const json* v = find(path);
    if (!v) return;
    if (!v->is_boolean()) return wrong_kind(path, *v, "true or false");
    field = v->get<bool>();
  }

  template <typename E>
  void choice(const char* path, E& field, const std::vector<E>& values, const char* (*name)(E)) {
    const json* v = find(path);
    if (!v) return;
    std::vector<std::string> names;
    for (E e : values) names.push_back(name(e));
    std::string allowed = "one of " + join(names, ", ");
    if (!v->is_string()) return wrong_kind(path, *v, allowed);
    for (E e : values)
      if (v->get<std::string>() == name(e)) {
        field = e;
        return;
      }
    problems.push_back(fmt::format("{} = {} is not a known value; allowed: {}", path, brief(*v), allowed));
  }
};

struct Writer {
  json doc = json::object();

  template <typename T>
  void put(const char* path, T&& value) {
    doc[json::json_pointer(json_pointer_of(path))] = std::forward<T>(value);
  }
  void annotation(const char*) {}  // notes are not part of the configuration
  template <typename T>
  void integer(const char* path, const T& field, uint64_t, uint64_t) { put(path, field); }
  void real(const char* path, const double& field, RealRange) { put(path, field); }
  void text(const char* path, const std::string& field, TextRule) { put(path, field); }
  void boolean(const char* path, const bool& field) { put(path, field); }
  template <typename E>
  void choice(const char* path, const E& field, const std::vector<E>&, const char* (*name)(E)) {
    put(path, name(field));
  }
};

// micro_batch * seq_len * world must divide total_tokens (the remaining
// factor is the gradient accumulation).
std::optional<std::string> batch_divisibility_problem(const BatchConfig& b, int world_size) {
  int64_t per_rank = int64_t(b.micro_batch) * b.seq_len;
  std::string factors = fmt::format("batch.micro_batch * batch.seq_len * world size = {} * {} * {}", b.micro_batch,
                                    b.seq_len, world_size);
  if (per_rank > b.total_tokens / world_size)
    return fmt::format("batch.total_tokens = {} is smaller than {}; allowed: a positive multiple of that product",
                       b.total_tokens, factors);
  int64_t per_micro_step = per_rank * world_size;
  // Micro-steps are counted in int: grad_accum, and grad_accum * world size
  // (the micro-batches of a step).
  constexpr int64_t kMaxMicroBatches = std::numeric_limits<int>::max();
  if (b.total_tokens / per_rank > kMaxMicroBatches)
    return fmt::format("batch.total_tokens = {} is {} micro-batches of batch.micro_batch * batch.seq_len = {} tokens; "
                       "allowed: at most {} micro-batches per step",
                       b.total_tokens, b.total_tokens / per_rank, per_rank, kMaxMicroBatches);
  int64_t below = b.total_tokens / per_micro_step * per_micro_step;
  if (below == b.total_tokens) return std::nullopt;
  std::string nearest = std::to_string(below);
  if (below <= std::numeric_limits<int64_t>::max() - per_micro_step)
    nearest += " or " + std::to_string(below + per_micro_step);
  return fmt::format("batch.total_tokens = {} is not a multiple of {} = {}; allowed: a multiple of {}, e.g. {}",
                     b.total_tokens, factors, per_micro_step, per_micro_step, nearest);
}

// GPT-2's parameter count with the padded vocabulary, in double (no
// overflow), without building the layout.
double parameter_count(const ModelConfig& m) {
  const double C = m.d_model;
  return double(m.padded_vocab()) * C + double(m.max_seq_len) * C + double(m.n_layer) * (12 * C * C + 13 * C) +
         2 * C;
}

}  // namespace

std::string model_size_problem(const ModelConfig& m) {
  if (m.n_layer > kMaxLayers) return fmt::format("model.n_layer = {}; allowed: 1..{}", m.n_layer, kMaxLayers);
  const double params = parameter_count(m);
  if (params > kMaxParameters)
    return fmt::format("the model would have {:.3g} parameters (model.vocab_size {}, max_seq_len {}, n_layer {}, "
                       "d_model {}); allowed: at most {:.3g} (2^40)",
                       params, m.vocab_size, m.max_seq_len, m.n_layer, m.d_model, kMaxParameters);
  return "";
}

std::string activation_options_problem(const ActivationOptions& options) {
  if (options.layernorm_backward_from == LayerNormBackwardFrom::output &&
      (options.recompute == Recompute::layernorm || options.recompute == Recompute::all))
    return fmt::format("train.layernorm_backward_from = \"output\" reads the LayerNorm outputs, which "
                       "train.recompute = \"{}\" does not keep; allowed with it: recompute \"none\" or \"gelu\" "
                       "(\"gelu\" keeps as little as \"all\" does, with no LayerNorm pass in backward)",
                       recompute_name(options.recompute));
  return "";
}

namespace {

void check_consistency(const Config& c, std::vector<std::string>& problems) {
  const ModelConfig& m = c.model;
  if (m.d_model % m.n_head != 0) {
    int below = m.d_model / m.n_head * m.n_head;
    problems.push_back(fmt::format(
        "model.d_model = {} is not divisible by model.n_head = {}; allowed: d_model a multiple of n_head, e.g. {}{}, "
        "or an n_head that divides {}",
        m.d_model, m.n_head, below > 0 ? std::to_string(below) + " or " : "", int64_t(below) + m.n_head, m.d_model));
  }
  if (const std::string size = model_size_problem(m); !size.empty()) problems.push_back(size);
  // A micro-batch's rows (tokens) are indexed by int in the model and the
  // backend ops.
  if (int64_t rows = int64_t(c.batch.micro_batch) * c.batch.seq_len; rows > std::numeric_limits<int>::max())
    problems.push_back(fmt::format("batch.micro_batch * batch.seq_len = {} * {} = {} tokens per micro-batch; allowed: "
                                   "at most {}",
                                   c.batch.micro_batch, c.batch.seq_len, rows, std::numeric_limits<int>::max()));
  if (c.batch.seq_len > m.max_seq_len)
    problems.push_back(fmt::format("batch.seq_len = {} exceeds model.max_seq_len = {}; allowed: 1..{}",
                                   c.batch.seq_len, m.max_seq_len, m.max_seq_len));
  if (auto problem = batch_divisibility_problem(c.batch, 1)) problems.push_back(*problem);
  if (c.optimizer.warmup_steps > c.train.steps)
    problems.push_back(fmt::format("optimizer.warmup_steps = {} exceeds train.steps = {}; allowed: 0..{}",
                                   c.optimizer.warmup_steps, c.train.steps, c.train.steps));
  if (const std::string problem = activation_options_problem(c.train.activation_options()); !problem.empty())
    problems.push_back(problem);
  if (int64_t(c.train.lm_head_chunks) > int64_t(c.batch.micro_batch) * c.batch.seq_len)
    problems.push_back(fmt::format(
        "train.lm_head_chunks = {} exceeds the {} rows of a micro-batch (batch.micro_batch x batch.seq_len); "
        "allowed: 1..{}",
        c.train.lm_head_chunks, int64_t(c.batch.micro_batch) * c.batch.seq_len,
        int64_t(c.batch.micro_batch) * c.batch.seq_len));
  if (c.dist.grad_reduce_dtype == GradReduceChoice::bf16 && compute_dtype(c.precision) != DType::bf16)
    problems.push_back(fmt::format(
        "dist.grad_reduce_dtype = \"bf16\" needs a bf16 precision mode, but precision = \"{}\" computes gradients "
        "in {}; allowed: auto or fp32",
        precision_name(c.precision), dtype_name(compute_dtype(c.precision))));
}

void raise_if_any(const std::vector<std::string>& problems, const std::string& origin) {
  if (problems.empty()) return;
  if (problems.size() == 1) fail("{}: {}", origin, problems.front());
  fail("{}: {} problems:\n  - {}", origin, problems.size(), join(problems, "\n  - "));
}

// Whether `text` is a JSON number as the grammar spells one (1e400 too,
// which no double holds).
bool spells_json_number(const std::string& text) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
    return i > start;
  };
  if (i < text.size() && text[i] == '-') ++i;
  if (i < text.size() && text[i] == '0')
    ++i;
  else if (!digits())
    return false;
  if (i < text.size() && text[i] == '.' && (++i, !digits())) return false;
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == text.size();
}

void require_object(const json& doc, const std::string& origin) {
  if (!doc.is_object()) fail("{}: the config must be a JSON object {{...}}, found {}", origin, describe_kind(doc));
}

json read_json_file(const std::string& path) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status))
    fail("config file '{}' does not exist; pass the path of a JSON run config, e.g. configs/demo.json", path);
  if (std::filesystem::is_directory(status)) fail("config file '{}' is a directory, not a JSON file", path);
  // A FIFO or device would block the read, or never end.
  if (!std::filesystem::is_regular_file(status)) fail("config file '{}' is not a regular file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("config file '{}' cannot be opened: {}", path, std::strerror(errno));
  json doc = parse_json(in, path);
  require_object(doc, path);
  return doc;
}

}  // namespace

void Config::validate_for_world(int world_size) const {
  if (world_size < 1) fail("world size {} is invalid; allowed: 1 or more ranks", world_size);
  if (auto problem = batch_divisibility_problem(batch, world_size)) fail("{}", *problem);
}

Config config_from_json(const json& doc, const std::string& origin) {
  require_object(doc, origin);
  std::vector<std::string> problems;
  check_known_keys(doc, schema(), "", problems);
  Config config;
  Reader reader{doc, problems};
  visit_config(reader, config);
  // Cross-key checks on partly default values would only add confusing noise.
  if (problems.empty()) check_consistency(config, problems);
  raise_if_any(problems, origin);
  return config;
}

json config_to_json(const Config& config) {
  Writer writer;
  visit_config(writer, config);
  return writer.doc;
}

namespace {

// A --set value is parsed as JSON, else taken as the string typed. For a
// key whose value is not a string, a value spelled as JSON (an object, an
// array, a number) is parsed as in a file: its syntax errors are reported
// and duplicate keys refused, rather than the text becoming a string. A
// string-valued key takes such text as typed ("[ab]*.bin" is a glob).
json override_value(const std::string& key, const std::string& text, const std::string& assignment,
                    bool string_valued) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  const bool spelled_as_json =
      (first != std::string::npos && (text[first] == '{' || text[first] == '[')) || spells_json_number(text);
  if (spelled_as_json && !string_valued) {
    std::istringstream in(text);
    return parse_json(in, "--set " + key + "=...", "", key);
  }
  // Nesting is limited as in a config file: dumping the value for an error
  // message would overflow the stack.
  const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t event, json&) {
    // As parse_json counts: the outermost array or object is depth 0.
    const bool opens = event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth)
      fail("--set {}=...: JSON nested deeper than {} levels; a config is a few levels deep", key, kMaxJsonDepth);
    return true;
  };
  json value = json::parse(text, limit_depth, /*allow_exceptions=*/false);
  if (!value.is_discarded()) return value;
  // A config file is JSON, which is UTF-8: other bytes could not be shown
  // in an error (brief() dumps the value) or written into a manifest.
  if (!is_valid_utf8(text))
    fail("--set '{}': the value is not valid UTF-8; allowed: UTF-8 text, as in a JSON config file", assignment);
  return json(text);
}

}  // namespace

void apply_override(json& doc, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    fail("--set '{}': expected KEY=VALUE with a dotted key, e.g. optimizer.lr=3e-4 or data.train=data/x_*.bin",
         assignment);
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  if (!doc.is_object()) fail("--set '{}': the config is {}, not a JSON object", assignment, describe_kind(doc));

  // The whole path is checked before the document is touched, so a rejected
  // override leaves it unchanged.
  std::vector<std::string> parts = split_dotted(key);
  const ordered_json* known = &schema();
  std::string known_path;
  for (const std::string& part : parts) {
    if (!known->is_object())
      fail("--set '{}': unknown key '{}'; '{}' is a value, not a section with keys", assignment, key, known_path);
    auto it = known->find(part);
    if (it == known->end()) fail("--set '{}': {}", assignment, unknown_key_message(part, known_path, *known));
    known = &*it;
    known_path = dotted_key(known_path, part);
  }
  json* target = &doc;
  std::string section_path;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    section_path = dotted_key(section_path, parts[i]);
    if (!target->contains(parts[i])) (*target)[parts[i]] = json::object();
    json& section = (*target)[parts[i]];
    if (!section.is_object())
      fail("--set '{}': cannot set '{}' because '{}' is {} in the config, not an object", assignment, key,
           section_path, describe_kind(section));
    target = &section;
  }
  (*target)[parts.back()] = override_value(key, text, assignment, known->is_boolean() && known->get<bool>());
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  json doc = read_json_file(path);
  std::string origin = path;
  for (const std::string& assignment : overrides) {
    apply_override(doc, assignment);
    origin += " --set " + assignment;
  }
  return config_from_json(doc, origin);
}

double learning_rate(const OptimizerConfig& o, int64_t t, int64_t total_steps) {
  if (o.warmup_steps > 0 && t <= o.warmup_steps) return o.lr * double(std::max<int64_t>(t, 0)) / double(o.warmup_steps);
  int64_t decay_steps = total_steps - o.warmup_steps;
  if (o.decay == LrDecay::constant || decay_steps <= 0) return o.lr;
  double progress = std::clamp(double(t - o.warmup_steps) / double(decay_steps), 0.0, 1.0);
  double min_lr = o.lr * o.min_lr_ratio;
  double fraction_left = o.decay == LrDecay::cosine ? 0.5 * (1.0 + std::cos(kPi * progress)) : 1.0 - progress;
  return min_lr + (o.lr - min_lr) * fraction_left;
}

}  // namespace srgpt
