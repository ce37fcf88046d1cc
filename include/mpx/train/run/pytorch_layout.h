// mpx keeps activations NHWC, PyTorch NCHW. Every parameter has the same layout in both except the weight
// of a Linear fed by a Flatten: its columns follow the flattened activation, (H, W, C) here but (C, H, W)
// after PyTorch's nn.Flatten. Model files and checkpoints store such weights in PyTorch's order, so a state
// dict moves both ways between mpx and PyTorch with the same predictions. Files written before that
// (mpx 0.x model files without "mpx.layout") are recognised by their metadata and reordered on load.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "mpx/nn/model.h"

namespace mpx::train {

// The metadata key and value that mark a file's tensors as being in PyTorch's order.
inline constexpr const char* kLayoutKey = "mpx.layout";
inline constexpr const char* kPytorchLayout = "pytorch";

enum class FileLayout : std::uint8_t {
  pytorch,    // "mpx.layout": "pytorch", or a file from PyTorch (no mpx metadata)
  mpx_nhwc,   // written by mpx before the layout was fixed: Flatten-fed weights in NHWC column order
};

// Reads the layout from a file's metadata. Throws IoError naming `path` for a layout this build does not know.
FileLayout file_layout(const std::map<std::string, std::string>& metadata, const std::string& path);

// A [rows, columns] weight whose columns PyTorch orders differently: memory_column[p] is the column of the
// tensor in memory that holds PyTorch's column p.
struct ColumnOrder {
  std::int64_t rows = 0, columns = 0;
  std::vector<std::int64_t> memory_column;

  void memory_to_file(const float* memory, float* file) const;
  void file_to_memory(const float* file, float* memory) const;
};

// The reordered parameters of a planned model, by parameter name ("fc1.weight"); empty when every tensor
// already has PyTorch's layout (a flatten of [N, H, W, 1] changes nothing). Throws InvalidArgument when a
// Flatten of a multi-channel activation feeds a layer with parameters other than a Linear: no PyTorch layout
// is defined for it, and writing NHWC order under PyTorch's names would be misread.
std::map<std::string, ColumnOrder> pytorch_column_orders(const nn::Sequential& model);

// The weights files keep transposed, by parameter name: GPT-2's Linear layers, which Hugging Face's Conv1D
// stores as [in, out]. The value is the shape in memory ([out, in]).
std::map<std::string, Shape> transposed_in_files(nn::Sequential& model);

// What the model file and the checkpoint share: a planned model's tensors moved between memory order and
// the file's order. A tensor is named by the parameter whose layout it has (its optimizer state too; an
// empty name for buffers, which never move).
class FileOrder {
 public:
  explicit FileOrder(nn::Sequential& model)
      : orders_(pytorch_column_orders(model)), transposed_(transposed_in_files(model)) {}
  // The shape `t` has in files ([in, out] for a transposed weight).
  Shape file_shape(const std::string& parameter, const Tensor& t) const;
  bool reorders_anything() const { return !orders_.empty(); }  // column orders (transposes are no old-file matter)
  const std::string& first_reordered() const { return orders_.begin()->first; }
  // `t`'s data in PyTorch's order to write: its own memory, or a reordered copy kept while this object lives.
  const void* for_writing(const std::string& parameter, const Tensor& t);
  // Fills `t` from FP32 `values` read from a file whose layout is `layout`.
  void read_into(const std::string& parameter, const float* values, FileLayout layout, Tensor& t) const;

 private:
  std::map<std::string, ColumnOrder> orders_;
  std::map<std::string, Shape> transposed_;
  std::deque<std::vector<float>> copies_;  // a deque: pointers handed out stay valid as it grows
};

}  // namespace mpx::train
