//go:build noexchange

package hostfs

// RenameFlagsOff is true in this build (-tags noexchange): every
// renameat2 with RENAME_EXCHANGE or RENAME_NOREPLACE fails with
// ErrNoExchange, as on a file system without them.
const RenameFlagsOff = true
