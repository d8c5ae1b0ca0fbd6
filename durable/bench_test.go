package durable

import (
	"sync"
	"testing"
)

// BenchmarkAppendParallel: 100 publishers appending one 60-byte record
// per call, as the gateway's async publishes do.
func BenchmarkAppendParallel(b *testing.B) {
	for _, level := range []Sync{SyncOS, SyncDisk} {
		b.Run([]string{"os", "disk"}[level], func(b *testing.B) {
			l, err := Open(b.TempDir(), WithSync(level))
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			rec := make([]byte, 60)
			var wg sync.WaitGroup
			per := b.N/100 + 1
			b.ResetTimer()
			for range 100 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					data, ids := [][]byte{rec}, make([]uint64, 1)
					for range per {
						if err := l.Append(data, ids); err != nil {
							b.Error(err)
							return
						}
						l.Remove(ids)
					}
				}()
			}
			wg.Wait()
		})
	}
}
