//go:build !linux

package durable

import (
	"errors"
	"os"
)

// mapFile is not used on this system: segments are written with write(2).
func mapFile(*os.File, int64) ([]byte, error) { return nil, errors.ErrUnsupported }

func unmapFile([]byte) error { return nil }

func prefault([]byte, <-chan struct{}) {}
