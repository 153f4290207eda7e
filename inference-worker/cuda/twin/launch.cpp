// The CPU twin's entry point: every kernel of ../*.cu compiled for the CPU (twin.hpp) and
// launched by name with the grid, block and parameter block the GPU launch would use.
#include "../attention.cu"
#include "../gemv.cu"
#include "../mmq.cu"
#include "../norm.cu"
#include "../prefill.cu"
#include "../sample.cu"

#include <cstring>

// 0: ran; -1: no kernel of that name; -2: parameter block of the wrong size; -3: block size not
// a multiple of 32 or grid empty.
extern "C" int sy_twin_launch(const char* name, const unsigned* grid, const unsigned* block,
                              const void* params, unsigned params_size) {
  for (const twin::Entry& e : twin::registry()) {
    if (std::strcmp(e.name, name) != 0) continue;
    if (e.params_size != params_size) return -2;
    const dim3 g{grid[0], grid[1], grid[2]}, b{block[0], block[1], block[2]};
    const unsigned n = b.x * b.y * b.z;
    if (n == 0 || n % 32 != 0 || g.x * g.y * g.z == 0) return -3;
    twin::launch(g, b, [&] { e.run(params); });
    return 0;
  }
  return -1;
}

// Kernel names, one per call with i = 0, 1, ...; null past the last.
extern "C" const char* sy_twin_kernel_name(unsigned i) {
  return i < twin::registry().size() ? twin::registry()[i].name : nullptr;
}
