/* One precision of the kernels: render.c defines REAL, SFX(name), EXP and SQRT, then includes this file. */
#include "rasterize.h"
#include "project.h"
#undef REAL
#undef SFX
#undef EXP
#undef SQRT
#undef NPACK
#undef NPIX
