/* One precision of the kernels: render.c defines REAL, SFX(name), EXP, LOG and SQRT, then includes this file. */
#include "rasterize.h"
#include "project.h"
#undef REAL
#undef SFX
#undef EXP
#undef LOG
#undef SQRT
#undef NREC
#undef SPAN_MIN
#undef PREFETCH
#undef NPIX
