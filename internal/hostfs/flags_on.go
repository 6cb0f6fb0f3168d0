//go:build !noexchange

package hostfs

// RenameFlagsOff is true in a build with -tags noexchange, where every
// renameat2 with RENAME_EXCHANGE or RENAME_NOREPLACE fails with
// ErrNoExchange, as on a file system without them: the tests of the file
// engine run so too, to prove its fallbacks.
const RenameFlagsOff = false
