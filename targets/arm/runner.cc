// Runs a Relax VM library exported for aarch64 (the arm_cpu target) under qemu-aarch64:
// loads it with the aarch64 TVM runtime, calls "main" on raw little-endian input files and
// writes each output to <out_prefix><k>.bin (printing its dtype and shape).
// The call is bracketed by `hint #0x70` / `hint #0x71` (no-ops on hardware), which the
// counting plugin (count_plugin.c) uses to count exactly the inference. With QCOMPILER_MAPS
// set, it prints its memory map to stderr ("qcompiler-map <line of /proc/self/maps>").
//
// usage: runner ./lib.so in0.bin float32 1,3,224,224 [in1.bin dtype shape ...] -- out_prefix
//        runner ./lib.so --calls calls.txt   (several calls in one process, a line each:
//                "function out_prefix [in.bin dtype shape]...", outputs after "call <j>")
// Each call is bracketed by the markers; stdout says "call <j>" before the outputs of call j.
// build: scripts/setup-arm.sh (aarch64-linux-gnu-g++ against the aarch64 tvm-ffi headers)
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
using namespace tvm::ffi;
struct CPUAlloc {
  void AllocData(DLTensor* t) { size_t n = 1; for (int i = 0; i < t->ndim; ++i) n *= t->shape[i]; t->data = std::aligned_alloc(64, ((n * ((t->dtype.bits * t->dtype.lanes + 7) / 8)) + 63) / 64 * 64); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};
static DLDataType parse_dtype(const std::string& s) {
  DLDataType d; d.lanes = 1;
  if (s == "float32") { d.code = kDLFloat; d.bits = 32; } else if (s == "uint8") { d.code = kDLUInt; d.bits = 8; }
  else if (s == "int8") { d.code = kDLInt; d.bits = 8; } else if (s == "int32") { d.code = kDLInt; d.bits = 32; }
  else { fprintf(stderr, "dtype %s?\n", s.c_str()); exit(2); }
  return d;
}
// One call: the function's inputs (file, dtype, shape) and the prefix of its outputs.
struct Call { std::string function; std::vector<std::string> input_args; std::string prefix; };
static Tensor read_input(const std::string& path, const std::string& dtype, const std::string& dims) {
  std::vector<int64_t> shape; std::stringstream ss(dims); std::string tok;
  while (std::getline(ss, tok, ',')) shape.push_back(std::stoll(tok));
  Tensor t = Tensor::FromNDAlloc(CPUAlloc(), ShapeView(shape.data(), shape.size()), parse_dtype(dtype), DLDevice{kDLCPU, 0});
  size_t bytes = 1; for (auto s : shape) bytes *= s; bytes *= (t.dtype().bits / 8);
  std::ifstream f(path, std::ios::binary); f.read(static_cast<char*>(t.data_ptr()), bytes);
  if (!f) { fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path.c_str()); exit(2); }
  return t;
}
static void write_outputs(const Any& result, const std::string& prefix) {
  Array<Any> outs = result.cast<Array<Any>>();
  for (size_t k = 0; k < outs.size(); ++k) {
    Tensor t = outs[k].cast<Tensor>();
    size_t bytes = t.dtype().bits / 8; for (int d = 0; d < t.ndim(); ++d) bytes *= t.shape()[d];
    std::ofstream f(prefix + std::to_string(k) + ".bin", std::ios::binary); f.write(static_cast<char*>(t.data_ptr()), bytes);
    printf("out%zu dtype %d/%d shape", k, t.dtype().code, t.dtype().bits); for (int d = 0; d < t.ndim(); ++d) printf(" %lld", (long long)t.shape()[d]); printf("\n");
  }
}
int main(int argc, char** argv) {
  std::vector<Call> calls;
  if (argc == 4 && std::string(argv[2]) == "--calls") {  // a call per line: function prefix [file dtype shape]...
    std::ifstream f(argv[3]); std::string line;
    while (std::getline(f, line)) {
      std::stringstream ss(line); Call c; ss >> c.function >> c.prefix; std::string w;
      while (ss >> w) c.input_args.push_back(w);
      if (!c.function.empty()) calls.push_back(c);
    }
  } else {
    Call c{"main", {}, ""}; int i = 2;
    for (; i < argc && std::string(argv[i]) != "--"; ++i) c.input_args.push_back(argv[i]);
    if (i + 1 >= argc) { fprintf(stderr, "usage: runner lib.so [in.bin dtype shape]... -- out_prefix\n"); return 2; }
    c.prefix = argv[i + 1]; calls.push_back(c);
  }
  Module lib = Module::LoadFromFile(argv[1]);
  Module vm = lib->GetFunction("vm_load_executable").value()().cast<Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  for (size_t j = 0; j < calls.size(); ++j) {
    const Call& c = calls[j];
    auto fn = vm->GetFunction(c.function);
    if (!fn.has_value()) { fprintf(stderr, "the library has no function %s\n", c.function.c_str()); return 3; }
    std::vector<Any> args;
    if (c.input_args.size() % 3) { fprintf(stderr, "call %zu: inputs come as file dtype shape triples\n", j); return 2; }
    for (size_t i = 0; i < c.input_args.size(); i += 3) {
      args.push_back(read_input(c.input_args[i], c.input_args[i + 1], c.input_args[i + 2]));
    }
    std::vector<AnyView> views(args.begin(), args.end());
    Any result;
    asm volatile("hint #0x70");
    fn.value().CallPacked(views.data(), views.size(), &result);
    asm volatile("hint #0x71");
    printf("call %zu\n", j);
    write_outputs(result, c.prefix);
  }
  if (std::getenv("QCOMPILER_MAPS")) {  // where each library lies, for the plugin's per-function profile
    std::ifstream maps("/proc/self/maps"); std::string line;
    while (std::getline(maps, line)) fprintf(stderr, "qcompiler-map %s\n", line.c_str());
  }
  return 0;
}
