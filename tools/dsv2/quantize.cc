#include "tools/dsv2/quantize.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/quant.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

namespace fs = std::filesystem;

// One output tensor (two for a quantized weight: values and scales) and
// where its data comes from: rows [row_begin, row_begin + rows) of `src`
// seen as [*, cols], quantized to `format`, or all of `src` copied.
struct Job {
  std::string name;
  const TensorView* src = nullptr;
  std::optional<kernels::QuantFormat> format;
  int64_t row_begin = 0, rows = 0, cols = 0;
};

std::string Where(const TensorView& t) { return absl::StrCat(t.file, ": tensor '", t.name, "'"); }

// The jobs for one input tensor.
absl::Status PlanTensor(const TensorView& t, const WeightQuantization& q, std::vector<Job>& jobs) {
  const std::optional<LinearRole> role = LinearRoleOf(t.name);
  const std::optional<kernels::QuantFormat> format = role ? PlannedFormat(q, *role) : std::nullopt;
  if (!format) {
    jobs.push_back(Job{t.name, &t, std::nullopt, 0, 0, 0});
    return absl::OkStatus();
  }
  if (!IsFloatDType(t.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(Where(t), " has dtype ", DTypeName(t.dtype),
                                                   "; quantize reads float checkpoints"));
  }
  const std::vector<int64_t>& s = t.shape;
  // Fused experts: [E, 2I, D] (gate rows then up rows per expert), [E, D, I].
  if (absl::EndsWith(t.name, "mlp.experts.gate_up_proj") ||
      absl::EndsWith(t.name, "mlp.experts.down_proj")) {
    const bool gate_up = absl::EndsWith(t.name, "gate_up_proj");
    if (s.size() != 3 || (gate_up && s[1] % 2 != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(Where(t), " is not a fused expert tensor ",
                                                     gate_up ? "[E, 2I, D]" : "[E, D, I]"));
    }
    const std::string prefix(t.name.substr(0, t.name.rfind('.') + 1));  // "...mlp.experts."
    for (int64_t e = 0; e < s[0]; ++e) {
      if (gate_up) {
        const int64_t I = s[1] / 2;
        jobs.push_back(
            Job{absl::StrCat(prefix, e, ".gate_proj.weight"), &t, format, e * 2 * I, I, s[2]});
        jobs.push_back(
            Job{absl::StrCat(prefix, e, ".up_proj.weight"), &t, format, e * 2 * I + I, I, s[2]});
      } else {
        jobs.push_back(
            Job{absl::StrCat(prefix, e, ".down_proj.weight"), &t, format, e * s[1], s[1], s[2]});
      }
    }
    return absl::OkStatus();
  }
  if (s.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(t), " has ", s.size(), " dimensions; a linear weight has 2"));
  }
  jobs.push_back(Job{t.name, &t, format, 0, s[0], s[1]});
  return absl::OkStatus();
}

// Quantizes a job's rows into values and scales, 64 rows of f32 at a time.
absl::Status QuantizeJob(const Job& j, std::string& values, std::vector<uint16_t>& scales) {
  const auto K = static_cast<size_t>(j.cols), N = static_cast<size_t>(j.rows);
  const size_t ldq = kernels::QuantRowBytes(*j.format, K);
  const size_t lds = kernels::QuantGroupsPerRow(K);
  values.assign(N * ldq, '\0');
  scales.assign(N * lds, 0);
  const size_t esize = DTypeSize(j.src->dtype);
  const size_t row_bytes = K * esize;
  const std::byte* first = j.src->data + static_cast<size_t>(j.row_begin) * row_bytes;
  constexpr size_t kBlockRows = 64;
  std::vector<std::byte> raw(std::min(N, kBlockRows) * row_bytes);
  std::vector<float> rows(std::min(N, kBlockRows) * K);
  for (size_t r0 = 0; r0 < N; r0 += kBlockRows) {
    const size_t n = std::min(kBlockRows, N - r0);
    std::memcpy(raw.data(), first + r0 * row_bytes, n * row_bytes);  // the mapping may be unaligned
    ToF32(raw.data(), j.src->dtype, n * K, rows.data());
    const absl::Status s =
        kernels::QuantizeRows(*j.format, rows.data(), K, n, K, values.data() + r0 * ldq, ldq,
                              scales.data() + r0 * lds, lds);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(Where(*j.src), " (", j.name, "): rows from ",
                                                     j.row_begin + r0, ": ", s.message()));
    }
    ReleaseMappedPages(first + r0 * row_bytes, n * row_bytes);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

// config.json with "quantization_config" (model/config.h's spelling).
absl::StatusOr<std::string> QuantizedConfigJson(const std::string& text, const std::string& source,
                                                const WeightQuantization& q) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  j["quantization_config"] = QuantizationConfigJson(q);
  return j.dump(2) + "\n";
}

}  // namespace

nlohmann::ordered_json QuantizationConfigJson(const WeightQuantization& q) {
  return {
      {"quant_method", "dsv2"},
      {"format", WeightFormatName(q.format)},
      {"group_size", kernels::kQuantGroupSize},
      {"scale_dtype", "float16"},
      {"experts_only", q.experts_only},
      {"lm_head", PlannedFormat(q, LinearRole::kLmHead) ? "int8" : "unquantized"},
  };
}

absl::Status QuantizeCheckpoint(const QuantizeOptions& o) {
  const WeightQuantization& q = o.quantization;
  if (q.format == WeightQuantization::Format::kNone) {
    return absl::InvalidArgumentError("--weights must be int8 or int4");
  }
  const fs::path in(o.model_dir), out(o.out_dir);
  DSV2_ASSIGN_OR_RETURN(const std::string config_text, ReadText(in / "config.json"));
  DSV2_ASSIGN_OR_RETURN(const ModelConfig config,
                        ParseModelConfig(config_text, (in / "config.json").string()));
  if (config.stored_quantization) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.model_dir,
                     " is already quantized (config.json has a quantization_config); quantize "
                     "the float checkpoint"));
  }
  DSV2_ASSIGN_OR_RETURN(const std::unique_ptr<Checkpoint> ckpt, Checkpoint::OpenDir(o.model_dir));

  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (fs::equivalent(in, out, ec)) {
      return absl::InvalidArgumentError("--out must be a new directory, not the input");
    }
    if (!fs::is_directory(out, ec) || !fs::is_empty(out, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat(o.out_dir, " exists and is not an empty directory"));
    }
  }

  std::vector<Job> jobs;
  const std::vector<std::string> names = ckpt->Names();
  for (const std::string& name : names) {
    DSV2_RETURN_IF_ERROR(PlanTensor(*ckpt->Find(name), q, jobs));
  }
  // A tied lm_head gets its own quantized copy (the loader prefers
  // lm_head.weight when present).
  const TensorView* embed = ckpt->Find("model.embed_tokens.weight");
  if (config.tie_word_embeddings && ckpt->Find("lm_head.weight") == nullptr && embed != nullptr &&
      embed->shape.size() == 2) {
    if (const auto f = PlannedFormat(q, LinearRole::kLmHead)) {
      jobs.push_back(Job{"lm_head.weight", embed, f, 0, embed->shape[0], embed->shape[1]});
    }
  }
  std::vector<TensorSpec> specs;
  for (const Job& j : jobs) {
    if (j.format) {
      specs.push_back(QuantValuesSpec(j.name, *j.format, j.rows, j.cols));
      specs.push_back(QuantScalesSpec(j.name, j.rows, j.cols));
    } else {
      specs.push_back(TensorSpec{j.name, j.src->dtype, j.src->shape});
    }
  }
  const size_t total = specs.size();

  fs::create_directories(out, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", o.out_dir, ": ", ec.message()));
  DSV2_ASSIGN_OR_RETURN(const std::string cfg,
                        QuantizedConfigJson(config_text, (in / "config.json").string(), q));
  DSV2_RETURN_IF_ERROR(WriteText(out / "config.json", cfg));
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                        "special_tokens_map.json", "tokenizer.model"}) {
    if (!fs::exists(in / f, ec)) continue;
    fs::copy_file(in / f, out / f, fs::copy_options::overwrite_existing, ec);
    if (ec)
      return absl::InternalError(absl::StrCat("copy ", (in / f).string(), ": ", ec.message()));
  }

  DSV2_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> writer,
                        CheckpointWriter::Create(o.out_dir, std::move(specs), o.max_shard_bytes));
  size_t done = 0;
  auto report = [&] {
    if (o.progress) o.progress(done, total, writer->written_bytes(), writer->total_bytes());
  };
  std::string values;
  std::vector<uint16_t> scales;
  for (const Job& j : jobs) {
    if (!j.format) {
      DSV2_RETURN_IF_ERROR(writer->Append(
          j.name, std::string_view(reinterpret_cast<const char*>(j.src->data), j.src->num_bytes)));
      ReleaseMappedPages(j.src->data, j.src->num_bytes);
      ++done;
      report();
      continue;
    }
    DSV2_RETURN_IF_ERROR(QuantizeJob(j, values, scales));
    DSV2_RETURN_IF_ERROR(writer->Append(j.name, values));
    DSV2_RETURN_IF_ERROR(writer->Append(
        QuantScaleName(j.name),
        std::string_view(reinterpret_cast<const char*>(scales.data()), scales.size() * 2)));
    done += 2;
    report();
  }
  return writer->Finish();
}

}  // namespace dsv2
