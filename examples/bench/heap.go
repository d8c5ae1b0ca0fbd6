package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingsgate/tbgateway"
)

// heapSampler records the peak of heap objects (live and not yet swept,
// like MemStats.HeapAlloc) every few milliseconds, without stopping the
// world.
type heapSampler struct {
	stopc chan struct{}
	done  chan struct{}
	base  uint64
	peak  uint64
}

const heapMetric = "/memory/classes/heap/objects:bytes"

func readHeap(s []metrics.Sample) uint64 {
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// startHeapSampler samples the heap, less what exclude reports held by
// the bench itself.
func startHeapSampler(exclude func() uint64) *heapSampler {
	h := &heapSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	s := []metrics.Sample{{Name: heapMetric}}
	read := func() uint64 {
		held, heap := exclude(), readHeap(s)
		return heap - min(held, heap)
	}
	h.base = read()
	h.peak = h.base
	go func() {
		defer close(h.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			h.peak = max(h.peak, read())
			select {
			case <-t.C:
			case <-h.stopc:
				return
			}
		}
	}()
	return h
}

func (h *heapSampler) stop() (base, peak uint64) {
	close(h.stopc)
	<-h.done
	return h.base, h.peak
}

type deviceHeapResult struct {
	bytes uint64
	took  time.Duration
}

// deviceHeap connects cfg.HeapDevices devices through one gateway and
// returns how much the heap grew, measured after a full GC with the gateway
// still open. The application keeps neither the handles nor the names: what
// remains is what the SDK tracks.
func deviceHeap(ctx context.Context, cfg config) (deviceHeapResult, error) {
	if cfg.Tbtest && cfg.Token == "" {
		return deviceHeapTbtest(ctx, cfg)
	}
	g, err := tbgateway.Dial(ctx, cfg.Broker, append([]tbgateway.Option{
		tbgateway.WithClientID(clientID("bench-devices-")),
		tbgateway.WithQoS(byte(cfg.QoS)),
		tbgateway.WithMaxInflight(cfg.Inflight)}, cfg.tokenOption()...)...)
	if err != nil {
		return deviceHeapResult{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = g.Close(cctx)
	}()
	before := liveHeap()
	start := time.Now()
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	// Connect blocks until its PUBACK: keep several windows' worth of calls
	// going at once.
	for range min(4*cfg.Inflight, 1024) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(cfg.HeapDevices) || ctx.Err() != nil {
					return
				}
				if _, err := g.Connect(ctx, fmt.Sprintf("Sensor %06d", i)); err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if n := failed.Load(); n > 0 {
		return deviceHeapResult{}, fmt.Errorf("%d connects failed, first: %w", n, firstErr)
	}
	after := liveHeap()
	if cfg.MemProfile != "" {
		if err := writeHeapProfile(cfg.MemProfile); err != nil {
			return deviceHeapResult{}, err
		}
	}
	if n := len(g.Devices()); n != cfg.HeapDevices {
		return deviceHeapResult{}, fmt.Errorf("gateway tracks %d devices, want %d", n, cfg.HeapDevices)
	}
	var grown uint64
	if after > before {
		grown = after - before
	}
	return deviceHeapResult{bytes: grown, took: took}, nil
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
