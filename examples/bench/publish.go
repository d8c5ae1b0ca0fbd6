package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/durable"
)

// sdkPublisher streams through the public API: one goroutine per device,
// each calling its Device's PublishTelemetryAsync for batch entries at a
// time, with entries it refills for every call as an application would:
// their Points, or with -values their Values maps.
type sdkPublisher struct {
	g       *tbgateway.Gateway
	ds      *dataset
	batch   int
	values  bool
	cleanup func()
}

func newSDKPublisher(ctx context.Context, cfg config, ds *dataset, batch int, mode ...tbgateway.Option) (*sdkPublisher, error) {
	g, err := tbgateway.Dial(ctx, cfg.Broker, append(append([]tbgateway.Option{
		tbgateway.WithClientID(clientID("bench-sdk-")),
		tbgateway.WithQoS(byte(cfg.QoS)),
		tbgateway.WithMaxInflight(cfg.Inflight)},
		cfg.tokenOption()...), mode...)...)
	if err != nil {
		return nil, err
	}
	return &sdkPublisher{g: g, ds: ds, batch: batch, values: cfg.Values}, nil
}

// sdkCalls tracks the outcome of every call.
type sdkCalls struct {
	t0      time.Time
	every   int             // latency of one call in every
	lat     []time.Duration // per sampled call, -1 until done or when failed
	pending atomic.Int64
	errors  atomic.Int64
	end     atomic.Int64 // since t0, of the last callback
	done    chan struct{}
}

// finish records a call's outcome: idx is the call's index when its latency
// is sampled (it started at start), -1 otherwise.
func (c *sdkCalls) finish(idx int, start time.Duration, err error) {
	now := time.Duration(-1)
	if err != nil {
		c.errors.Add(1)
	} else if idx >= 0 {
		now = time.Since(c.t0)
		c.lat[idx/c.every] = now - start
	}
	if c.pending.Add(-1) == 0 {
		if now < 0 {
			now = time.Since(c.t0)
		}
		c.end.Store(int64(now))
		close(c.done)
	}
}

func (p *sdkPublisher) fire(ctx context.Context) outcome {
	devices, entries := len(p.ds.devices), p.ds.entries
	perDevice := (entries + p.batch - 1) / p.batch
	calls := devices * perDevice
	every := sampling(calls)
	c := &sdkCalls{every: every, lat: make([]time.Duration, (calls+every-1)/every), done: make(chan struct{})}
	for i := range c.lat {
		c.lat[i] = -1
	}
	c.pending.Store(int64(calls))
	before := p.g.Stats().Published
	start := make(chan struct{})
	unsampled := func(err error) { c.finish(-1, 0, err) }
	var wg sync.WaitGroup
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := p.g.Device(p.ds.devices[d])
			batch := make([]tbgateway.Entry, p.batch)
			for k := range batch {
				if p.values {
					batch[k].Values = make(tbgateway.Values, len(p.ds.keys))
				} else {
					batch[k].Points = make([]tbgateway.Point, len(p.ds.keys))
				}
			}
			<-start
			for call := range perDevice {
				first := call * p.batch
				n := min(p.batch, entries-first)
				for k := range n {
					batch[k].TS = baseTS + int64(first+k)
					if p.values {
						p.ds.fill(batch[k].Values, d, first+k)
					} else {
						p.ds.fillPoints(batch[k].Points, d, first+k)
					}
				}
				idx := d*perDevice + call
				// Calls whose latency is not sampled share one callback:
				// the harness allocates nothing for them.
				done := unsampled
				var t time.Duration
				if idx%every == 0 {
					t = time.Since(c.t0)
					done = func(err error) { c.finish(idx, t, err) }
				}
				if err := dev.PublishTelemetryAsync(ctx, batch[:n], done); err != nil {
					done(err)
				}
			}
		}()
	}
	c.t0 = time.Now()
	close(start)
	select {
	case <-c.done:
	case <-ctx.Done():
		// Capped: calls still pending count as failed, and latencies are
		// not read while late callbacks may still write them.
		wg.Wait()
		return outcome{wall: time.Since(c.t0), messages: int64(p.g.Stats().Published - before),
			errors: c.errors.Load() + c.pending.Load()}
	}
	wg.Wait()
	o := outcome{wall: time.Duration(c.end.Load()), messages: int64(p.g.Stats().Published - before)}
	for _, l := range c.lat {
		if l >= 0 {
			o.lat = append(o.lat, l)
		}
	}
	o.errors = c.errors.Load()
	return o
}

func (p *sdkPublisher) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.g.Close(ctx)
	if p.cleanup != nil {
		p.cleanup()
	}
}

// newDurablePublisher is the sdk run with a durable queue in a folder of
// its own under the system's temporary directory (the real disk here).
func newDurablePublisher(ctx context.Context, cfg config, ds *dataset, level durable.Sync) (*sdkPublisher, error) {
	dir, err := os.MkdirTemp("", "tbgateway-bench-queue-")
	if err != nil {
		return nil, err
	}
	q, err := durable.Open(dir, durable.WithSync(level))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p, err := newSDKPublisher(ctx, cfg, ds, 1, tbgateway.WithCoalescing(cfg.Linger), tbgateway.WithQueueStore(q))
	if err != nil {
		_ = q.Close()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p.cleanup = func() { _ = os.RemoveAll(dir) }
	return p, nil
}

// rawPublisher sends pre-encoded payloads with plain paho, at most
// inflight of them unacknowledged: a semaphore bounds the window and a
// collector waits for the tokens in publish order (brokers acknowledge a
// connection's publishes in order), recording each one's latency.
type rawPublisher struct {
	c        paho.Client
	payloads *payloadSet
	qos      byte
	inflight int
}

func newRawPublisher(cfg config, payloads *payloadSet) (*rawPublisher, error) {
	c, err := pahoConnect(cfg.Broker, "bench-raw-", cfg.pahoToken)
	if err != nil {
		return nil, err
	}
	return &rawPublisher{c: c, payloads: payloads, qos: byte(cfg.QoS), inflight: cfg.Inflight}, nil
}

func (p *rawPublisher) fire(ctx context.Context) outcome {
	type sent struct {
		tok   paho.Token
		start time.Duration
	}
	window := make(chan struct{}, p.inflight)
	pending := make(chan sent, p.inflight)
	total := p.payloads.len()
	every := sampling(total)
	o := outcome{lat: make([]time.Duration, 0, total/every+1)}
	var end time.Duration
	collected := make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(collected)
		for s := range pending {
			select {
			case <-s.tok.Done():
				if s.tok.Error() != nil {
					o.errors++
				} else if s.start >= 0 {
					o.lat = append(o.lat, time.Since(t0)-s.start)
				}
			case <-ctx.Done():
				o.errors++
			}
			<-window
		}
		end = time.Since(t0)
	}()
publish:
	for i := range total {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			break publish
		}
		start := time.Duration(-1)
		if i%every == 0 {
			start = time.Since(t0)
		}
		pending <- sent{p.c.Publish(topic, p.qos, false, p.payloads.at(i)), start}
		o.messages++
	}
	close(pending)
	<-collected
	o.errors += int64(total) - o.messages
	o.wall = end
	return o
}

func (p *rawPublisher) close() { p.c.Disconnect(100) }

func pahoConnect(broker, prefix string, adjust func(*paho.ClientOptions)) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(clientID(prefix)).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetKeepAlive(30 * time.Second)
	if adjust != nil {
		adjust(o)
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", broker, tok.Error())
	}
	return c, nil
}

func clientID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
