// CKVM is header-only (static inline wrappers); this file exists so SwiftPM builds the target.
#include "ckvm.h"
