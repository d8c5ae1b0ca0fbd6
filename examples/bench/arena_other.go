//go:build !unix

package main

// offHeap falls back to the heap where mmap is not available.
func offHeap(n int) (b []byte, ok bool) { return make([]byte, 0, n), false }

func freeOffHeap([]byte) {}
