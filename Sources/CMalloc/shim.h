// glibc's malloc extensions (malloc_trim), which Swift's Glibc module does not import.
#if defined(__linux__) && __has_include(<malloc.h>)
#include <malloc.h>
#endif
