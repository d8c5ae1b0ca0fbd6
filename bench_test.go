package tbgateway

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/thingsgate/tbgateway/durable"
	"github.com/thingsgate/tbgateway/internal/outbox"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// TestEncoderAllocatesNothingPerDataPoint holds the promise behind the
// throughput figures: encoding costs allocations per record at most (its
// body, when too large for the shared slab; records come in chunks), never
// per entry or data point, once the pooled buffers are warm.
func TestEncoderAllocatesNothingPerDataPoint(t *testing.T) {
	lim := sizeLimit{max: DefaultMaxPayloadSize, qos: 1}
	// A dedicated encoder rather than the pool, which the race detector
	// empties at random.
	e := new(encoder)
	allocs := func(entries []Entry) float64 {
		return testing.AllocsPerRun(200, func() {
			e.buf, e.items = e.buf[:0], e.items[:0]
			recs, err := e.deviceRecords(nil, "Device A", "", entries, lim)
			if err != nil || len(recs) != 1 {
				t.Fatalf("records %d, err %v", len(recs), err)
			}
		})
	}
	// Both bodies are past the slab's limit: one allocation each.
	small, large := allocs(benchEntries(20, 5)), allocs(benchEntries(400, 5))
	t.Logf("allocations per call: %v for 100 data points, %v for 2000", small, large)
	if large != small {
		t.Fatalf("allocations grow with data points: %v for 100, %v for 2000", small, large)
	}
	if small > 1 {
		t.Fatalf("%v allocations per record, want at most 1", small)
	}
	// A streaming call of one small entry allocates nothing of its own,
	// nor does one of many Points.
	if n := allocs(benchEntries(1, 5)); n != 0 {
		t.Fatalf("%v allocations for one small entry, want 0 (slab and record chunks)", n)
	}
	if n := allocs(benchPointEntries(1, 5)); n != 0 {
		t.Fatalf("%v allocations for one small entry of Points, want 0", n)
	}
	mixed := benchPointEntries(1, 5)
	mixed[0].Values = Values{"v": 1.5}
	if n := allocs(mixed); n != 0 {
		t.Fatalf("%v allocations for one entry of Values and Points, want 0", n)
	}
	if small, large := allocs(benchPointEntries(20, 5)), allocs(benchPointEntries(400, 5)); small != large || small > 1 {
		t.Fatalf("entries of Points: %v allocations for 100 data points, %v for 2000", small, large)
	}
}

// BenchmarkEncodeTelemetry measures encoding 100 devices × 10 entries × 5
// keys into records, as PublishTelemetry does.
func BenchmarkEncodeTelemetry(b *testing.B) {
	t := Telemetry{}
	for d := 0; d < 100; d++ {
		t[fmt.Sprintf("Device %d", d)] = benchEntries(10, 5)
	}
	lim := sizeLimit{max: DefaultMaxPayloadSize, qos: 1}
	b.ReportAllocs()
	var bytes int64
	for b.Loop() {
		e := getEncoder()
		recs, err := e.telemetryRecords(t, lim)
		e.release()
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range recs {
			bytes += int64(len(r.Body))
		}
	}
	b.SetBytes(bytes / int64(b.N))
	b.ReportMetric(float64(b.N)*5000/b.Elapsed().Seconds(), "points/s")
}

// BenchmarkSplit measures splitting one device's oversized batch (2000
// entries) into records that fit 64 KiB messages.
func BenchmarkSplit(b *testing.B) {
	es := benchEntries(2000, 5)
	lim := sizeLimit{max: DefaultMaxPayloadSize, qos: 1}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		e := getEncoder()
		recs, err := e.deviceRecords(nil, "Device A", "", es, lim)
		e.release()
		if err != nil {
			b.Fatal(err)
		}
		n = len(recs)
	}
	b.ReportMetric(float64(n), "records")
}

// BenchmarkPack measures packing queued records of 100 devices into
// messages no larger than 64 KiB, with the exact size count, as the sender
// does: records of calls of 20 entries, or a stream of one-entry records
// with the devices interleaved.
func BenchmarkPack(b *testing.B) {
	lim := sizeLimit{max: DefaultMaxPayloadSize, qos: 1}
	t := Telemetry{}
	for d := 0; d < 100; d++ {
		t[fmt.Sprintf("Device %d", d)] = benchEntries(20, 5)
	}
	e := getEncoder()
	calls, err := e.telemetryRecords(t, lim)
	if err != nil {
		b.Fatal(err)
	}
	var stream []*outbox.Record
	for i := range 20 {
		for d := range 100 {
			recs, err := e.deviceRecords(nil, fmt.Sprintf("Device %d", d), "", t[fmt.Sprintf("Device %d", d)][i:i+1], lim)
			if err != nil {
				b.Fatal(err)
			}
			stream = append(stream, recs...)
		}
	}
	e.release()
	for _, c := range []struct {
		name string
		recs []*outbox.Record
	}{{"calls", calls}, {"stream", stream}} {
		b.Run(c.name, func(b *testing.B) {
			var p outbox.Packer
			b.ReportAllocs()
			for b.Loop() {
				rest := c.recs
				for len(rest) > 0 {
					m, n := p.Pack(rest, DefaultMaxPayloadSize, 0, 1, true)
					if m.Size(1) > DefaultMaxPayloadSize {
						b.Fatal("over the limit")
					}
					rest = rest[n:]
				}
			}
			b.ReportMetric(float64(b.N)*10000/b.Elapsed().Seconds(), "points/s")
		})
	}
}

// BenchmarkPublishTelemetryAsync streams one 5-key entry per call from
// parallel goroutines, one device each, through the public API to the
// embedded broker, and waits for every acknowledgement: the per-call cost of
// the whole outbound path, with the queue in memory and in a durable log
// (package durable, at its default sync level) on the real file system.
func BenchmarkPublishTelemetryAsync(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchPublishAsync(b) })
	b.Run("durable", func(b *testing.B) {
		q, err := durable.Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		benchPublishAsync(b, WithQueueStore(q))
	})
}

func benchPublishAsync(b *testing.B, opts ...Option) {
	br := testbroker.Start(b)
	ctx := context.Background()
	g, err := Dial(ctx, br.URL, append([]Option{WithClientID("bench-async")}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close(ctx)
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
		ids    atomic.Int64
	)
	done := func(err error) {
		if err != nil {
			failed.Add(1)
		}
		wg.Done()
	}
	b.ReportAllocs()
	b.SetParallelism(50) // 100 publishers on two cores, as examples/bench runs
	b.RunParallel(func(pb *testing.PB) {
		name := fmt.Sprintf("Device %d", ids.Add(1))
		v := make(Values, 5)
		entries := []Entry{{Values: v}}
		for i := int64(0); pb.Next(); i++ {
			entries[0].TS = 1700000000000 + i
			for k, key := range [...]string{"k0", "k1", "k2", "k3", "k4"} {
				if k%2 == 0 {
					v[key] = float64(i%100_000)/4 + 0.125
				} else {
					v[key] = i * 7
				}
			}
			wg.Add(1)
			if err := g.PublishTelemetryAsync(ctx, Telemetry{name: entries}, done); err != nil {
				b.Error(err)
				wg.Done()
			}
		}
	})
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d calls failed", n)
	}
	b.ReportMetric(float64(b.N)*5/b.Elapsed().Seconds(), "points/s")
}

// BenchmarkPublishTelemetrySync is the latency of one synchronous
// publish (a 5-key entry, QoS 1, waited for its PUBACK from the embedded
// broker), with the queue in memory and in a durable log at each sync
// level; "fdatasync" is one 100-byte write and flush on the same disk,
// the group commit a SyncDisk publish adds.
func BenchmarkPublishTelemetrySync(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchPublishSync(b) })
	for _, level := range []durable.Sync{durable.SyncOS, durable.SyncDisk} {
		b.Run([]string{"durable-os", "durable-disk"}[level], func(b *testing.B) {
			q, err := durable.Open(b.TempDir(), durable.WithSync(level))
			if err != nil {
				b.Fatal(err)
			}
			benchPublishSync(b, WithQueueStore(q))
		})
	}
	b.Run("fdatasync", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "f"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		rec := make([]byte, 100)
		for b.Loop() {
			if _, err := f.Write(rec); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchPublishSync(b *testing.B, opts ...Option) {
	br := testbroker.Start(b)
	ctx := context.Background()
	g, err := Dial(ctx, br.URL, append([]Option{WithClientID("bench-sync")}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close(ctx)
	v := Values{"k0": 0.5, "k1": 1, "k2": 2.5, "k3": 3, "k4": 4.5}
	entries := []Entry{{Values: v}}
	var i int64
	for b.Loop() {
		i++
		entries[0].TS = 1700000000000 + i
		if err := g.PublishTelemetry(ctx, Telemetry{"Device": entries}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeCall measures what one streaming call of one 5-key entry
// costs before it is queued: validation, encoding and its record, with the
// values in a map or as points.
func BenchmarkEncodeCall(b *testing.B) {
	for _, form := range []struct {
		name    string
		entries []Entry
	}{{"values", benchEntries(1, 5)}, {"points", benchPointEntries(1, 5)}} {
		b.Run(form.name, func(b *testing.B) {
			lim := sizeLimit{max: DefaultMaxPayloadSize, qos: 1}
			b.ReportAllocs()
			for b.Loop() {
				e := getEncoder()
				recs, err := e.deviceRecords(nil, "Device A", "", form.entries, lim)
				e.release()
				if err != nil || len(recs) != 1 {
					b.Fatal(err)
				}
			}
		})
	}
}
