// Runs a Relax VM library exported for aarch64 (the arm_cpu target) under qemu-aarch64:
// loads it with the aarch64 TVM runtime, calls "main" on raw little-endian input files and
// writes each output to <out_prefix><k>.bin (printing its dtype and shape).
// The call is bracketed by `hint #0x70` / `hint #0x71` (no-ops on hardware), which the
// counting plugin (count_plugin.c) uses to count exactly the inference.
//
// usage: runner ./lib.so in0.bin float32 1,3,224,224 [in1.bin dtype shape ...] -- out_prefix
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
int main(int argc, char** argv) {
  Module lib = Module::LoadFromFile(argv[1]);
  Module vm = lib->GetFunction("vm_load_executable").value()().cast<Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  Function main_fn = vm->GetFunction("main").value();
  DLDevice cpu{kDLCPU, 0};
  std::vector<Any> args;
  int i = 2;
  for (; i < argc && std::string(argv[i]) != "--"; i += 3) {
    std::vector<int64_t> shape; std::stringstream ss(argv[i + 2]); std::string tok;
    while (std::getline(ss, tok, ',')) shape.push_back(std::stoll(tok));
    Tensor t = Tensor::FromNDAlloc(CPUAlloc(), ShapeView(shape.data(), shape.size()), parse_dtype(argv[i + 1]), cpu);
    size_t bytes = 1; for (auto s : shape) bytes *= s; bytes *= (t.dtype().bits / 8);
    std::ifstream f(argv[i], std::ios::binary); f.read(static_cast<char*>(t.data_ptr()), bytes);
    args.push_back(t);
  }
  std::string prefix = argv[i + 1];
  std::vector<AnyView> views(args.begin(), args.end());
  Any result;
  asm volatile("hint #0x70");
  main_fn.CallPacked(views.data(), views.size(), &result);
  asm volatile("hint #0x71");
  Array<Any> outs = result.cast<Array<Any>>();
  for (size_t k = 0; k < outs.size(); ++k) {
    Tensor t = outs[k].cast<Tensor>();
    size_t bytes = t.dtype().bits / 8; for (int d = 0; d < t.ndim(); ++d) bytes *= t.shape()[d];
    std::ofstream f(prefix + std::to_string(k) + ".bin", std::ios::binary); f.write(static_cast<char*>(t.data_ptr()), bytes);
    printf("out%zu dtype %d/%d shape", k, t.dtype().code, t.dtype().bits); for (int d = 0; d < t.ndim(); ++d) printf(" %lld", (long long)t.shape()[d]); printf("\n");
  }
  return 0;
}
