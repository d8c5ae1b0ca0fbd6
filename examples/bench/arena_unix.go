//go:build unix

package main

import "syscall"

// offHeap returns a buffer of capacity n that the Go heap does not hold,
// so that keeping payloads in it changes neither the heap peak nor how
// often the GC runs; ok is false if it could not be mapped.
func offHeap(n int) (b []byte, ok bool) {
	m, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, 0, n), false
	}
	return m[:0], true
}

// freeOffHeap releases a buffer offHeap mapped.
func freeOffHeap(b []byte) { _ = syscall.Munmap(b[:cap(b)]) }
