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

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14): fault pages in
// writable without touching them.
const madvPopulateWrite = 23

// prefault faults m's pages in ahead of the appends, a chunk at a time,
// until done closes: the first write to a page of a fresh mapping is a
// page fault that otherwise costs every 30th Append several times its
// copy. It stops at the first error (an older kernel, or m unmapped).
func prefault(m []byte, done <-chan struct{}) {
	const chunk = 1 << 20
	for off := 0; off < len(m); off += chunk {
		select {
		case <-done:
			return
		default:
		}
		if syscall.Madvise(m[off:min(off+chunk, len(m))], madvPopulateWrite) != nil {
			return
		}
	}
}
