package main

import (
	"fmt"
	"runtime"
	"time"
)

// summary is the last output line.
type summary struct {
	PointsPerS            *float64 `json:"points_per_s"`
	MessagesPerS          *float64 `json:"messages_per_s"`
	BytesPerS             *float64 `json:"bytes_per_s"`
	LatencyP50MS          *float64 `json:"latency_p50_ms"`
	LatencyP99MS          *float64 `json:"latency_p99_ms"`
	PeakHeapMB            *float64 `json:"peak_heap_mb"`
	Lost                  int64    `json:"lost"`
	Duplicates            int64    `json:"duplicates"`
	Errors                int64    `json:"errors"`
	NaivePointsPerS       *float64 `json:"naive_points_per_s"`
	PackedPointsPerS      *float64 `json:"packed_points_per_s"`
	UnbatchedPointsPerS   *float64 `json:"unbatched_points_per_s"`
	BatchedPointsPerS     *float64 `json:"batched_points_per_s"`
	RatioVsRawPacked      *float64 `json:"ratio_vs_raw_packed"`
	RatioVsNaive          *float64 `json:"ratio_vs_naive"`
	RatioUnbatchedVsNaive *float64 `json:"ratio_unbatched_vs_naive"`
	RatioBatchedVsPacked  *float64 `json:"ratio_batched_vs_raw_packed"`
	DurablePointsPerS     *float64 `json:"durable_points_per_s"`
	DurableSyncPointsPerS *float64 `json:"durable_sync_points_per_s"`
	// RatioDurableVsMemory: sdk-durable (durable.SyncOS) against sdk,
	// best of each; the per-round ratios are in the text output.
	RatioDurableVsMemory     *float64     `json:"ratio_durable_vs_memory"`
	RatioDurableSyncVsMemory *float64     `json:"ratio_durable_sync_vs_memory"`
	HeapMB100kDevices        *float64     `json:"heap_mb_100k_devices"`
	HeapDevices              int          `json:"heap_devices"`
	BallastMB                int          `json:"ballast_mb"`
	Form                     string       `json:"sdk_form"`
	Devices                  int          `json:"devices"`
	Entries                  int          `json:"entries"`
	Keys                     int          `json:"keys"`
	QoS                      int          `json:"qos"`
	LingerMS                 float64      `json:"linger_ms"`
	Inflight                 int          `json:"inflight"`
	Broker                   string       `json:"broker"`
	Cores                    int          `json:"gomaxprocs"`
	Repeat                   int          `json:"repeat"`
	Runs                     []resultJSON `json:"runs"`
}

// newSummary is the last output line with the settings of cfg, against
// the broker so named; the runs' figures are added as they come.
func newSummary(cfg config, broker string) summary {
	return summary{
		Devices: cfg.Devices, Entries: cfg.Entries, Keys: cfg.Keys, QoS: cfg.QoS,
		LingerMS: ms(cfg.Linger), Inflight: cfg.Inflight, Broker: broker, Cores: runtime.GOMAXPROCS(0),
		Repeat: cfg.Repeat, BallastMB: cfg.BallastMB, Form: cfg.form(),
	}
}

// count adds the losses of r: they count over every repetition.
func (s *summary) count(r *result) {
	s.Lost += r.Lost
	s.Duplicates += r.Dups
	s.Errors += r.Errors
}

// best sets the figures from the best result of each run, by run name, in
// the order of runs: the sdk run's figures, the other runs' points/s and
// the ratios between them.
func (s *summary) best(runs []string, results map[string]*result) {
	for _, name := range runs {
		s.Runs = append(s.Runs, results[name].json())
	}
	if r := results[runSDK]; r != nil {
		s.PointsPerS, s.MessagesPerS, s.BytesPerS = ptr(r.pointsPerS()), ptr(r.perS(r.Messages)), ptr(r.perS(r.Bytes))
		s.LatencyP50MS, s.LatencyP99MS, s.PeakHeapMB = ptr(ms(r.P50)), ptr(ms(r.P99)), ptr(mb(r.PeakHeap))
	}
	rate := func(name string) *float64 {
		if r := results[name]; r != nil {
			return ptr(r.pointsPerS())
		}
		return nil
	}
	ratio := func(a, b *float64) *float64 {
		if a == nil || b == nil || *b == 0 {
			return nil
		}
		return ptr(*a / *b)
	}
	s.NaivePointsPerS, s.PackedPointsPerS = rate(runNaive), rate(runPacked)
	s.UnbatchedPointsPerS, s.BatchedPointsPerS = rate(runUnbatched), rate(runBatched)
	s.RatioVsRawPacked = ratio(s.PointsPerS, s.PackedPointsPerS)
	s.RatioVsNaive = ratio(s.PointsPerS, s.NaivePointsPerS)
	s.RatioUnbatchedVsNaive = ratio(s.UnbatchedPointsPerS, s.NaivePointsPerS)
	s.RatioBatchedVsPacked = ratio(s.BatchedPointsPerS, s.PackedPointsPerS)
	s.DurablePointsPerS, s.DurableSyncPointsPerS = rate(runDurable), rate(runDurableSync)
	s.RatioDurableVsMemory = ratio(s.DurablePointsPerS, s.PointsPerS)
	s.RatioDurableSyncVsMemory = ratio(s.DurableSyncPointsPerS, s.PointsPerS)
}

// durableLine is the text line of the best durable runs' ratios to the
// best sdk run, "" when there are none.
func (s *summary) durableLine() string {
	if s.RatioDurableVsMemory == nil && s.RatioDurableSyncVsMemory == nil {
		return ""
	}
	return fmt.Sprintf("durable: sdk-durable/sdk %s   sdk-durable-sync/sdk %s", fmtRatio(s.RatioDurableVsMemory), fmtRatio(s.RatioDurableSyncVsMemory))
}

// ratiosLine is the text line of the ratios between the best runs.
func (s *summary) ratiosLine() string {
	return fmt.Sprintf("ratios: sdk/raw-packed %s   sdk/naive %s   sdk-unbatched/naive %s   sdk-batched/raw-packed %s",
		fmtRatio(s.RatioVsRawPacked), fmtRatio(s.RatioVsNaive), fmtRatio(s.RatioUnbatchedVsNaive), fmtRatio(s.RatioBatchedVsPacked))
}

// roundLine is the text line of the durable runs' ratios to the sdk run
// within round rep (from 0), "" when the round has nothing to compare.
func roundLine(rep int, round map[string]*result) string {
	m := round[runSDK]
	if m == nil || m.pointsPerS() <= 0 || (round[runDurable] == nil && round[runDurableSync] == nil) {
		return ""
	}
	line := fmt.Sprintf("round %d:", rep+1)
	for _, n := range []string{runDurable, runDurableSync} {
		if d := round[n]; d != nil {
			line += fmt.Sprintf("  %s/sdk %.2f×", n, d.pointsPerS()/m.pointsPerS())
		}
	}
	return line
}

// deviceHeapLine is the text line of the device heap measurement of n
// devices.
func deviceHeapLine(n int, dh deviceHeapResult) string {
	return fmt.Sprintf("%d devices connected in %.2f s (%.0f connects/s): SDK heap +%.2f MB (%.0f bytes/device)",
		n, dh.took.Seconds(), float64(n)/dh.took.Seconds(), mb(dh.bytes), float64(dh.bytes)/float64(n))
}

func ptr(f float64) *float64 { return &f }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

func fmtRatio(f *float64) string {
	if f == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f×", *f)
}

type result struct {
	Name     string
	Points   int64 // delivered: received by the subscriber, duplicates apart
	Entries  int64 // device entries sent
	Messages int64 // published
	Bytes    int64 // payload bytes received by the subscriber
	Wall     time.Duration
	P50, P99 time.Duration
	PeakHeap uint64 // peak of live+unswept heap objects during the timed part
	BaseHeap uint64 // at its start
	Lost     int64
	Dups     int64
	Errors   int64         // failed calls or publishes
	SubLag   time.Duration // from the last ack until the subscriber had everything
	// Heap allocations in the process during the timed part: the publisher,
	// the subscriber and, when embedded, the broker.
	Allocs, AllocBytes uint64
}

// perEntry divides n by the device entries sent.
func (r *result) perEntry(n uint64) float64 { return float64(n) / float64(r.Entries) }

func (r *result) perS(n int64) float64 {
	if r.Wall <= 0 {
		return 0
	}
	return float64(n) / r.Wall.Seconds()
}

func (r *result) pointsPerS() float64 { return r.perS(r.Points) }

func (r *result) String() string {
	avg := 0.0
	if r.Messages > 0 {
		avg = float64(r.Bytes) / float64(r.Messages) / 1024
	}
	return fmt.Sprintf("%-16s %5.2f M points/s %7.0f msg/s %6.1f MB/s  p50 %7.2f ms  p99 %7.2f ms  heap peak %5.1f MB (base %4.1f)  lost %d  dup %d  errors %d  [%d points in %.3f s, %d msgs of %.1f KiB avg, %.1f allocs (%.0f B) per entry, subscriber done %+.0f ms after last ack]",
		r.Name, r.pointsPerS()/1e6, r.perS(r.Messages), r.perS(r.Bytes)/(1<<20), ms(r.P50), ms(r.P99),
		mb(r.PeakHeap), mb(r.BaseHeap), r.Lost, r.Dups, r.Errors, r.Points, r.Wall.Seconds(), r.Messages, avg,
		r.perEntry(r.Allocs), r.perEntry(r.AllocBytes), ms(r.SubLag))
}

// inRound is r as the text output names it: with -repeat, with its round
// rep (from 0) of repeat.
func (r *result) inRound(rep, repeat int) *result {
	if repeat <= 1 {
		return r
	}
	labelled := *r
	labelled.Name = fmt.Sprintf("%s #%d", r.Name, rep+1)
	return &labelled
}

type resultJSON struct {
	Name               string  `json:"name"`
	Points             int64   `json:"points"`
	Messages           int64   `json:"messages"`
	Bytes              int64   `json:"bytes"`
	Seconds            float64 `json:"seconds"`
	PointsPerS         float64 `json:"points_per_s"`
	MessagesPerS       float64 `json:"messages_per_s"`
	BytesPerS          float64 `json:"bytes_per_s"`
	LatencyP50MS       float64 `json:"latency_p50_ms"`
	LatencyP99MS       float64 `json:"latency_p99_ms"`
	PeakHeapMB         float64 `json:"peak_heap_mb"`
	Lost               int64   `json:"lost"`
	Duplicates         int64   `json:"duplicates"`
	Errors             int64   `json:"errors"`
	SubLagMS           float64 `json:"subscriber_lag_ms"`
	AllocsPerEntry     float64 `json:"allocs_per_entry"`
	AllocBytesPerEntry float64 `json:"alloc_bytes_per_entry"`
}

func (r *result) json() resultJSON {
	return resultJSON{
		Name: r.Name, Points: r.Points, Messages: r.Messages, Bytes: r.Bytes, Seconds: r.Wall.Seconds(),
		PointsPerS: r.pointsPerS(), MessagesPerS: r.perS(r.Messages), BytesPerS: r.perS(r.Bytes),
		LatencyP50MS: ms(r.P50), LatencyP99MS: ms(r.P99), PeakHeapMB: mb(r.PeakHeap),
		Lost: r.Lost, Duplicates: r.Dups, Errors: r.Errors, SubLagMS: ms(r.SubLag),
		AllocsPerEntry: r.perEntry(r.Allocs), AllocBytesPerEntry: r.perEntry(r.AllocBytes),
	}
}
