/// Linux ABI constants glibc declares only under `_GNU_SOURCE`, which Swift's Glibc module lacks.
let O_PATH: Int32 = 0o10000000
let O_NOATIME: Int32 = 0o1000000
let AT_EMPTY_PATH: Int32 = 0x1000
let MREMAP_MAYMOVE: Int32 = 1
let MREMAP_FIXED: Int32 = 2
let GRND_NONBLOCK: Int32 = 1
let GRND_RANDOM: Int32 = 2
let RESOLVE_NO_MAGICLINKS: Int32 = 0x02
let RESOLVE_IN_ROOT: Int32 = 0x10
