package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/netproxy"
	"github.com/thingsgate/tbgateway/tbtest"
)

const (
	token    = "recovery-token"
	phaseKey = "phase" // the telemetry key; its value is the cut number
)

// result is the report of one (devices, rtt) run. Times are server-side
// arrival times counted from the proxy's accept of the gateway's new
// connection; with several cuts the headline figures are medians.
type result struct {
	Devices    int      `json:"devices"`
	RTTMS      float64  `json:"rtt_ms"`
	Window     int      `json:"window"`
	Cuts       int      `json:"cuts"`
	FirstMS    *float64 `json:"first_ms"`     // time to first data
	AllMS      *float64 `json:"all_ms"`       // time to all: every device's entry arrived
	WorstAllMS *float64 `json:"worst_all_ms"` // the slowest cut
	FirstRTTs  *float64 `json:"first_rtts"`
	AllRTTs    *float64 `json:"all_rtts"`
	TargetMS   float64  `json:"target_ms"` // (devices/window + 3) × RTT
	TargetRTTs float64  `json:"target_rtts"`
	VsTarget   *float64 `json:"all_vs_target"` // AllMS / TargetMS
	// Delivered counts the devices whose entry the server stored, in the
	// cut where that was fewest.
	Delivered  int     `json:"delivered"`
	Lost       int     `json:"lost"`       // acknowledged, yet not stored (all cuts)
	Failed     int     `json:"failed"`     // publishes that reported an error (all cuts)
	Duplicates int     `json:"duplicates"` // entries stored more than once (all cuts)
	SetupMS    float64 `json:"setup_ms"`   // connecting every device, without latency
	Err        string  `json:"error,omitempty"`
	PerCut     []cut   `json:"per_cut"`
}

// cut is what one cut measured.
type cut struct {
	Cut     int     `json:"cut"`
	FirstMS float64 `json:"first_ms"`
	AllMS   float64 `json:"all_ms"` // 0 unless every device's entry arrived
	// ReconnectWaitMS is from the server becoming reachable again to the
	// accept: the gateway's reconnect back-off, not part of the figures.
	ReconnectWaitMS float64 `json:"reconnect_wait_ms"`
	Acked           int     `json:"acked"`
	Failed          int     `json:"failed"`
	Stored          int     `json:"stored"` // devices with the entry stored
	Lost            int     `json:"lost"`
	Duplicates      int     `json:"duplicates"`
	Announced       uint64  `json:"announced"` // Stats.Announced during the cut
	Resent          uint64  `json:"resent"`
	// Rejected counts the server's refusals during the cut; the arrival
	// times assume none (tbtest lists refused publishes among Messages).
	Rejected int `json:"rejected"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ptr(f float64) *float64 { return &f }

// measure runs one (devices, rtt) configuration within cfg.Timeout. It
// never fails: an error is reported in the result, with the stage it
// happened in.
func measure(parent context.Context, cfg config, n int, rtt time.Duration) result {
	r := result{
		Devices: n, RTTMS: ms(rtt), Window: cfg.Window, Cuts: cfg.Cuts,
		TargetRTTs: float64(n)/float64(cfg.Window) + 3,
	}
	r.TargetMS = r.TargetRTTs * ms(rtt)
	ctx, cancel := context.WithTimeout(parent, cfg.Timeout)
	defer cancel()
	b := &bench{cfg: cfg, n: n, rtt: rtt}
	b.setStage("starting")
	if err := b.run(ctx, &r); err != nil {
		stage := b.getStage()
		if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
			r.Err = fmt.Sprintf("timed out after %v while %s: %v", cfg.Timeout, stage, err)
		} else {
			r.Err = fmt.Sprintf("%s: %v", stage, err)
		}
	}
	r.summarize(rtt)
	return r
}

// summarize fills the headline figures from the cuts.
func (r *result) summarize(rtt time.Duration) {
	r.Delivered = r.Devices
	if len(r.PerCut) < r.Cuts {
		r.Delivered = 0 // a cut never finished
	}
	var firsts, alls []float64
	complete := true
	for _, c := range r.PerCut {
		r.Lost += c.Lost
		r.Failed += c.Failed
		r.Duplicates += c.Duplicates
		r.Delivered = min(r.Delivered, c.Stored)
		firsts = append(firsts, c.FirstMS)
		alls = append(alls, c.AllMS)
		complete = complete && c.AllMS > 0
	}
	if len(firsts) == 0 {
		return
	}
	r.FirstMS = ptr(median(firsts))
	if rtt > 0 {
		r.FirstRTTs = ptr(*r.FirstMS / ms(rtt))
	}
	if !complete {
		return
	}
	r.AllMS, r.WorstAllMS = ptr(median(alls)), ptr(slices.Max(alls))
	if rtt > 0 {
		r.AllRTTs = ptr(*r.AllMS / ms(rtt))
		r.VsTarget = ptr(*r.AllMS / r.TargetMS)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// text is the report line.
func (r *result) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devices=%d rtt=%v window=%d", r.Devices, time.Duration(r.RTTMS*float64(time.Millisecond)), r.Window)
	if r.Cuts > 1 {
		fmt.Fprintf(&b, " cuts=%d (medians)", r.Cuts)
	}
	b.WriteString(": ")
	fmt.Fprintf(&b, "first data %s (%s RTT), all devices %s (%s RTT)",
		fmtMS(r.FirstMS), fmtF(r.FirstRTTs), fmtMS(r.AllMS), fmtF(r.AllRTTs))
	if r.Cuts > 1 {
		fmt.Fprintf(&b, " worst %s", fmtMS(r.WorstAllMS))
	}
	fmt.Fprintf(&b, ", target (%d/%d+3)×RTT = %s (%.1f RTT), all/target %s×",
		r.Devices, r.Window, fmtMS(&r.TargetMS), r.TargetRTTs, fmtF(r.VsTarget))
	fmt.Fprintf(&b, ", lost %d, failed %d, delivered %d/%d, duplicates %d", r.Lost, r.Failed, r.Delivered, r.Devices, r.Duplicates)
	var announced uint64
	var wait []float64
	for _, c := range r.PerCut {
		announced += c.Announced
		wait = append(wait, c.ReconnectWaitMS)
	}
	fmt.Fprintf(&b, " [setup %s, re-announced %d", fmtMS(&r.SetupMS), announced)
	if len(wait) > 0 {
		w := median(wait)
		fmt.Fprintf(&b, ", reconnect back-off %s", fmtMS(&w))
	}
	b.WriteString("]")
	if r.Err != "" {
		fmt.Fprintf(&b, " FAILED: %s", r.Err)
	}
	return b.String()
}

func fmtMS(v *float64) string {
	if v == nil {
		return "-"
	}
	d := time.Duration(*v * float64(time.Millisecond))
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}

func fmtF(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v, 'f', 1, 64)
}

// bench is the state of one run.
type bench struct {
	cfg config
	n   int
	rtt time.Duration

	srv    *tbtest.Server
	px     *netproxy.Proxy
	gw     *tb.Gateway
	events chan tb.ConnectionEvent
	names  []string
	index  map[string]int
	devs   []*tb.Device

	mu    sync.Mutex
	stage string // what the run is doing, for the error of a timeout
}

func (b *bench) setStage(format string, a ...any) {
	b.mu.Lock()
	b.stage = fmt.Sprintf(format, a...)
	b.mu.Unlock()
}

func (b *bench) getStage() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stage
}

func (b *bench) run(ctx context.Context, r *result) error {
	// The server reports the window as its in-flight limit: the gateway
	// takes the smaller of its own and the server's (ThingsBoard's
	// default is 100), so -window would otherwise be capped at 100.
	b.srv = tbtest.NewServer(nil, tbtest.WithGateway(token), tbtest.WithSessionLimits(tbtest.SessionLimits{
		MaxPayloadSize:      tbtest.DefaultMaxPayloadSize,
		MaxInflightMessages: b.cfg.Window,
	}))
	defer b.srv.Close()
	var err error
	// No latency while setting up: connecting 100 000 devices a window per
	// round trip is not what is measured.
	if b.px, err = netproxy.New(b.srv.Addr()); err != nil {
		return err
	}
	defer b.px.Close()

	b.setStage("dialling")
	b.events = make(chan tb.ConnectionEvent, 1024)
	b.gw, err = tb.Dial(ctx, b.px.URL(),
		tb.WithAccessToken(token),
		tb.WithMaxInflight(b.cfg.Window),
		// Room for every device's entry while the link is down.
		tb.WithQueue(max(tb.DefaultQueueMessages, 2*b.n), max(tb.DefaultQueueBytes, 256*b.n), tb.OverflowBlock),
		// The gateway backs off between failed attempts up to this cap.
		// The back-off is not measured (the clock starts at the accept of
		// the new connection); the cap only keeps the runs short.
		tb.WithMaxReconnectDelay(time.Second),
		tb.WithConnectionListener(func(e tb.ConnectionEvent) {
			select {
			case b.events <- e:
			default: // drained before every cut; never full in practice
			}
		}))
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.gw.Close(cctx)
	}()

	start := time.Now()
	if err := b.connectAll(ctx); err != nil {
		return err
	}
	r.SetupMS = ms(time.Since(start))
	b.px.SetLatency(b.rtt)

	for k := 1; k <= b.cfg.Cuts; k++ {
		c, err := b.cut(ctx, k)
		if err != nil {
			return fmt.Errorf("cut %d: %w", k, err)
		}
		r.PerCut = append(r.PerCut, c)
	}
	return nil
}

// connectAll connects every device, several windows' worth at once (each
// Connect waits for its PUBACK), and waits until the server has them all
// connected.
func (b *bench) connectAll(ctx context.Context) error {
	b.setStage("connecting %d devices", b.n)
	b.names = make([]string, b.n)
	b.index = make(map[string]int, b.n)
	b.devs = make([]*tb.Device, b.n)
	for i := range b.names {
		b.names[i] = fmt.Sprintf("Device %06d", i)
		b.index[b.names[i]] = i
	}
	parallel := b.cfg.Parallel
	if parallel == 0 {
		parallel = max(2*b.cfg.Window, 16)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(parallel, b.n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.n || ctx.Err() != nil {
					return
				}
				d, err := b.gw.Connect(ctx, b.names[i])
				if err != nil {
					cancel(fmt.Errorf("connect %s: %w", b.names[i], err))
					return
				}
				b.devs[i] = d
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}

	b.setStage("waiting for the server to have %d devices connected", b.n)
	pending := slices.Clone(b.names)
	return b.srv.WaitFor(ctx, func() bool {
		// Connect returns after the PUBACK, which the server sends once the
		// session is open: this normally succeeds at the first look, and
		// each look only checks the devices still missing.
		keep := pending[:0]
		for _, name := range pending {
			if d, ok := b.srv.Device(name); !ok || !d.Connected {
				keep = append(keep, name)
			}
		}
		pending = keep
		return len(pending) == 0
	})
}

// cut measures one recovery.
//
// What is measured is the data that waited through the outage: while the
// link is down and the server unreachable, every device queues one entry
// (value = the cut number), then the server becomes reachable again. Time
// to all is when the last of those entries reached the server, so it
// counts exactly the work of recovering (reconnecting, announcing the
// devices again, releasing the queue). A steady trickle of telemetry
// would mix in the drain of whatever backlog it had built before the cut,
// and its own pace would decide when a device "has new data".
//
// The server is kept unreachable (Refuse) while the entries are queued so
// that all of them are queued before the new connection: the clock starts
// at the proxy's accept of that connection. Arrival times are the
// server's receive times of the PUBLISH packets (tbtest stamps each
// Message when it reads it), read after the fact, so no polling interval
// enters the figures; the end is detected by the acknowledgements, which
// the server sends after storing.
func (b *bench) cut(ctx context.Context, k int) (cut, error) {
	c := cut{Cut: k}
	b.setStage("cut %d: waiting for the gateway to be idle", k)
	if err := b.waitIdle(ctx); err != nil {
		return c, err
	}
	for len(b.events) > 0 {
		<-b.events
	}
	before := b.gw.Stats()
	rejectedBefore := len(b.srv.Rejections())
	accepted := b.px.Accepted()

	b.px.Refuse(true)
	b.px.Cut()
	b.setStage("cut %d: waiting for the gateway to notice the cut", k)
	if err := b.waitDown(ctx); err != nil {
		b.px.Refuse(false)
		return c, err
	}

	b.setStage("cut %d: queueing an entry for each of %d devices", k, b.n)
	status := make([]atomic.Int32, b.n) // 1 acknowledged, 2 failed
	var decided atomic.Int64
	all := make(chan struct{})
	decide := func(i int, err error) {
		s := int32(1)
		if err != nil {
			s = 2
		}
		status[i].Store(s)
		if decided.Add(1) == int64(b.n) {
			close(all)
		}
	}
	entry := tb.Entry{TS: time.Now().UnixMilli(), Points: []tb.Point{tb.Int(phaseKey, k)}}
	for i, d := range b.devs {
		// The entry is encoded before the call returns: it may be reused.
		if err := d.PublishTelemetryAsync(ctx, []tb.Entry{entry}, func(err error) { decide(i, err) }); err != nil {
			decide(i, err)
		}
	}
	reachable := time.Now()
	b.px.Refuse(false)

	b.setStage("cut %d: waiting for the gateway to reconnect", k)
	at, err := b.px.WaitAccepted(ctx, accepted+1)
	if err != nil {
		return c, err
	}
	c.ReconnectWaitMS = ms(at.Sub(reachable))

	b.setStage("cut %d: waiting for the data of every device", k)
	select {
	case <-all:
	case <-ctx.Done():
		return c, fmt.Errorf("%d of %d entries acknowledged or failed: %w", decided.Load(), b.n, ctx.Err())
	}
	after := b.gw.Stats()
	c.Announced = after.Announced - before.Announced
	c.Resent = after.Resent - before.Resent
	c.Rejected = len(b.srv.Rejections()) - rejectedBefore

	b.setStage("cut %d: reading what the server received", k)
	first, last, timed := b.arrivals(at, k)
	if timed > 0 {
		c.FirstMS = ms(first.Sub(at))
	}
	if timed == b.n {
		c.AllMS = ms(last.Sub(at))
	}
	for i, name := range b.names {
		stored := 0
		for _, p := range b.srv.Series(name, phaseKey) {
			if v, ok := p.Value.(int64); ok && v == int64(k) {
				stored++
			}
		}
		acked := status[i].Load() == 1
		switch {
		case acked:
			c.Acked++
		default:
			c.Failed++
		}
		if stored > 0 {
			c.Stored++
			c.Duplicates += stored - 1
		} else if acked {
			c.Lost++
		}
	}
	return c, nil
}

// arrivals reads every telemetry message the server received since at and
// returns when the first entry of cut k arrived, when the last device's
// first such entry arrived, and how many devices had one.
func (b *bench) arrivals(at time.Time, k int) (first, last time.Time, devices int) {
	want := []byte(strconv.Itoa(k))
	seen := make([]bool, b.n)
	var body map[string][]struct {
		Values map[string]json.RawMessage `json:"values"`
	}
	for _, m := range b.srv.Messages() {
		if m.Time.Before(at) || m.Topic != "v1/gateway/telemetry" {
			continue
		}
		clear(body)
		if json.Unmarshal(m.Payload, &body) != nil {
			continue
		}
		for name, entries := range body {
			i, ok := b.index[name]
			if !ok || seen[i] {
				continue
			}
			for _, e := range entries {
				if bytes.Equal(bytes.TrimSpace(e.Values[phaseKey]), want) {
					seen[i] = true
					devices++
					if first.IsZero() || m.Time.Before(first) {
						first = m.Time
					}
					if m.Time.After(last) {
						last = m.Time
					}
					break
				}
			}
		}
	}
	return first, last, devices
}

// waitIdle waits until nothing is queued or in flight, so that a cut
// catches no data on its way. There is no event for it in the API: it
// looks every few milliseconds.
func (b *bench) waitIdle(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if s := b.gw.Stats(); s.Queued == 0 && s.InFlight == 0 {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitDown waits for the gateway to report the connection down, so that
// the entries queued next wait for the new connection instead of being
// handed to the dead one.
func (b *bench) waitDown(ctx context.Context) error {
	for {
		select {
		case e := <-b.events:
			if e.State == tb.StateDown {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
