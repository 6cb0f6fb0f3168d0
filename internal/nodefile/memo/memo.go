// Package memo remembers, by name, the last content seen there and a
// value made of it (a parsed file), so that content seen again is not
// parsed again. Content is recognised by its SHA-256, never by time stamps
// or inode: content anyone changed, even by a byte, is a miss.
package memo

import "crypto/sha256"

// Cache is the memory of one kind of value. The zero Cache is empty and
// ready; it is not safe for concurrent use.
type Cache[V any] struct {
	m map[string]entry[V]
}

type entry[V any] struct {
	sum [sha256.Size]byte
	v   V
}

// Get returns the value made of data under name, if data is the content
// last put there.
func (c *Cache[V]) Get(name string, data []byte) (V, bool) {
	e, ok := c.m[name]
	if !ok || e.sum != sha256.Sum256(data) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Last returns the value last put under name, whatever its content.
func (c *Cache[V]) Last(name string) (V, bool) {
	e, ok := c.m[name]
	return e.v, ok
}

// Put remembers that name holds data, and v made of it. Only the digest
// of data is kept: a value that needs the content holds it.
func (c *Cache[V]) Put(name string, data []byte, v V) {
	if c.m == nil {
		c.m = map[string]entry[V]{}
	}
	c.m[name] = entry[V]{sum: sha256.Sum256(data), v: v}
}

// Forget drops what is remembered under name.
func (c *Cache[V]) Forget(name string) { delete(c.m, name) }
