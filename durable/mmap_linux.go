//go:build linux

package durable

import (
	"os"
	"syscall"
)

// mapFile reserves size bytes of disk for f (fallocate, so that a full
// disk is an error here and never a fault later when the mapping is
// written) and maps them shared and writable: what is copied into the
// mapping is in the page cache, the operating system's, at once.
func mapFile(f *os.File, size int64) ([]byte, error) {
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return nil, &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	return m, nil
}

func unmapFile(m []byte) error { return syscall.Munmap(m) }
