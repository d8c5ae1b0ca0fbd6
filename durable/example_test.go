package durable_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/thingsgate/tbgateway/durable"
)

// A queue folder damaged while the gateway was down (here: its segment
// cut short) is reported, with what can and cannot be read; WithRecover
// keeps every readable record and moves the damage aside.
func ExampleWithRecover() {
	dir, _ := os.MkdirTemp("", "queue-")
	defer os.RemoveAll(dir)

	q, _ := durable.Open(dir)
	for i := range 100 {
		_ = q.Append([][]byte{fmt.Appendf(nil, "record %03d", i)}, make([]uint64, 1))
	}
	_ = q.Close()

	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	st, _ := os.Stat(segs[0])
	_ = os.Truncate(segs[0], st.Size()-30) // most of the last record is gone

	_, err := durable.Open(dir)
	var de *durable.DamageError
	fmt.Println(errors.Is(err, durable.ErrDamaged), errors.As(err, &de), de.Salvaged, de.Lost)

	q, err = durable.Open(dir, durable.WithRecover())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Close()
	r := q.Recovery()
	n := 0
	_ = q.Load(func(uint64, []byte) error { n++; return nil })
	fmt.Println(r.Salvaged, r.Lost, r.MovedTo != "", n)
	// Output:
	// true true 99 1
	// 99 1 true 99
}
