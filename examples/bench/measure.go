package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/durable"
)

// outcome is what a publisher reports about its timed part.
type outcome struct {
	wall     time.Duration // first publish to last ack
	messages int64
	lat      []time.Duration // per call or message; failed ones excluded
	errors   int64
}

// publisher is one run: setup connects and prepares everything untimed,
// then fire sends all the data and waits for the acks.
type publisher interface {
	fire(ctx context.Context) outcome
	close()
}

func setup(ctx context.Context, cfg config, ds *dataset, name string) (publisher, error) {
	switch name {
	case runSDK:
		return newSDKPublisher(ctx, cfg, ds, 1, tbgateway.WithCoalescing(cfg.Linger))
	case runBatched:
		return newSDKPublisher(ctx, cfg, ds, cfg.Batch, tbgateway.WithCoalescing(cfg.Linger))
	case runUnbatched:
		return newSDKPublisher(ctx, cfg, ds, 1, tbgateway.WithoutCoalescing())
	case runDurable, runDurableSync:
		level := durable.SyncOS
		if name == runDurableSync {
			level = durable.SyncDisk
		}
		return newDurablePublisher(ctx, cfg, ds, level)
	case runNaive:
		return newRawPublisher(cfg, ds.naiveSet())
	case runPacked:
		return newRawPublisher(cfg, ds.packedSet(byte(cfg.QoS)))
	}
	return nil, fmt.Errorf("unknown run %q", name)
}

// measure runs one publisher with a fresh subscriber verifying every point
// (with -tbtest, against a fresh tbtest server whose storage is verified).
func measure(ctx context.Context, cfg config, ds *dataset, name string) (*result, error) {
	if cfg.Tbtest {
		return measureTbtest(ctx, cfg, ds, name)
	}
	v := newVerifier(ds)
	sub, err := subscribe(cfg.Broker, v)
	if err != nil {
		return nil, err
	}
	defer sub.Disconnect(100)
	p, err := setup(ctx, cfg, ds, name)
	if err != nil {
		return nil, err
	}
	defer p.close()

	t, err := timed(ctx, cfg, p, name, func() uint64 { return v.retained() + uint64(len(ballast)) })
	if err != nil {
		return nil, err
	}
	lag := v.wait(ctx, cfg.Quiet).Sub(t.ackedAt)
	st := v.stats()
	r := t.result(name, ds, st, st.malformed)
	r.SubLag = lag
	return r, nil
}

// timing is what the timed part of a run measured.
type timing struct {
	o                  outcome
	ackedAt            time.Time
	base, peak         uint64
	allocs, allocBytes uint64
}

// timed fires p inside what every run shares: the profiles, a GC before,
// the heap sampler (retained is the heap that is not the publisher's) and
// the allocation counts.
func timed(ctx context.Context, cfg config, p publisher, name string, retained func() uint64) (timing, error) {
	stopProfile, err := startProfiles(cfg, name)
	if err != nil {
		return timing{}, err
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	heap := startHeapSampler(retained)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	t := timing{o: p.fire(rctx)}
	t.ackedAt = time.Now()
	cancel()
	stopProfile()
	t.base, t.peak = heap.stop()
	runtime.ReadMemStats(&m1)
	t.allocs, t.allocBytes = m1.Mallocs-m0.Mallocs, m1.TotalAlloc-m0.TotalAlloc
	return t, nil
}

// result is the run's figures from its timing and what was verified;
// verifyErrors are the verifier's errors to add to the publisher's.
func (t timing) result(name string, ds *dataset, st verifyStats, verifyErrors int64) *result {
	r := &result{
		Name: name, Points: st.unique, Entries: int64(len(ds.devices) * ds.entries), Messages: t.o.messages, Bytes: st.bytes, Wall: t.o.wall,
		PeakHeap: t.peak, BaseHeap: t.base, Lost: ds.points() - st.unique, Dups: st.dups,
		Errors: t.o.errors + verifyErrors, Allocs: t.allocs, AllocBytes: t.allocBytes,
	}
	r.P50, r.P99 = percentile(t.o.lat, 0.50), percentile(t.o.lat, 0.99)
	return r
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[max(0, int(math.Ceil(p*float64(len(lat))))-1)]
}

// latencyEvery: in runs of sampleFrom calls or messages or more, the
// latency of one in latencyEvery is measured, plenty for percentiles, so
// that reading the clock (about 50 ns a read on this machine, twice per
// call) stays out of the other calls.
const (
	latencyEvery = 8
	sampleFrom   = 100_000
)

// sampling returns how many calls of n share one latency measurement.
func sampling(n int) int {
	if n >= sampleFrom {
		return latencyEvery
	}
	return 1
}
