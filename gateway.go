package tbgateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"

	"github.com/thingsgate/tbgateway/internal/dispatch"
	"github.com/thingsgate/tbgateway/internal/outbox"
)

// Topics of the gateway's own device API.
const (
	topicSelfTelemetry          = "v1/devices/me/telemetry"
	topicSelfAttributes         = "v1/devices/me/attributes"
	topicSelfAttrRequestPrefix  = "v1/devices/me/attributes/request/"
	topicSelfAttrResponsePrefix = "v1/devices/me/attributes/response/"
	topicSelfRPCRequestPrefix   = "v1/devices/me/rpc/request/"
	topicSelfRPCResponsePrefix  = "v1/devices/me/rpc/response/"
	topicSelfClaim              = "v1/devices/me/claim"
)

// subscriptions are the filters ThingsBoard accepts. Downlinks arrive
// without them too (the server pushes to gateway topics regardless), but a
// subscription sets their QoS.
var subscriptions = []string{
	topicGatewayAttributes,
	topicGatewayRPC,
	topicGatewayAttrResponse,
	topicSelfAttributes,
	topicSelfAttrResponsePrefix + "+",
	topicSelfRPCRequestPrefix + "+",
	topicSelfRPCResponsePrefix + "+",
}

// Gateway is one MQTT session with ThingsBoard as a gateway device. It is
// safe for concurrent use. Create it with Dial and end it with Close.
type Gateway struct {
	opts options
	log  *slog.Logger

	life life

	sess  *session // the connection's life
	out   *sender  // the outbound path
	reg   registry // connected devices and renames
	hs    handlers // attribute and RPC handlers, RPCs running
	req   requests // ids and replies awaited
	lanes lanes    // where callbacks and handlers run
	stats counters // Stats
	echo  echoFilter
	self  GatewayDevice
}

// life is the gateway's own lifetime.
type life struct {
	ctx    context.Context // given to handlers and waits; cancelled by Close
	cancel context.CancelFunc
	done   chan struct{} // closed by Close
	once   sync.Once
}

// lanes run user code off paho's goroutines: handlers in bounded lanes,
// callbacks and events in order.
type lanes struct {
	cbPending atomic.Int64     // outcomes whose callback has not run yet
	updates   *dispatch.Lane   // attribute-update handlers, in order
	rpcs      *dispatch.Lane   // RPC handlers
	callbacks *dispatch.Serial // async publish callbacks
	events    *dispatch.Serial // connection and device events
}

// Dial opens the MQTT connection to broker (tcp://, mqtt://, ssl://,
// tls://, mqtts://, ws:// or wss:// URL) and returns once ThingsBoard has
// accepted the gateway, its downlink subscriptions are in place and its
// session limits are known. It blocks until then or ctx ends; a refused
// CONNECT is a *ConnectError. With WithOfflineStart it returns at once
// instead and keeps trying in the background. After a later connection
// loss the gateway reconnects by itself.
func Dial(ctx context.Context, broker string, opts ...Option) (*Gateway, error) {
	o, u, err := parseDialOptions(broker, opts)
	if err != nil {
		return nil, err
	}
	if o.clientID == "" {
		o.clientID = randomClientID()
	}
	g := &Gateway{opts: o, log: o.logger, life: life{done: make(chan struct{})}}
	g.self.g = g
	g.life.ctx, g.life.cancel = context.WithCancel(context.Background())
	onPanic := func(v any, stack []byte) {
		g.stats.panics.Add(1)
		g.log.Error("tbgateway: handler panicked", "panic", v, "stack", string(stack))
	}
	g.out = newSender(g)
	g.lanes = lanes{
		updates:   dispatch.NewLane(1, o.handlerQueue, o.handlerBytes, onPanic),
		rpcs:      dispatch.NewLane(o.rpcWorkers, o.handlerQueue, o.handlerBytes, onPanic),
		callbacks: dispatch.NewSerial(onPanic, g.out.wake), // a sender held back by slow callbacks looks again,
		events:    dispatch.NewSerial(onPanic, nil),
	}
	if o.store != nil {
		g.out.durable = &store{o.store}
		if err := g.out.restore(ctx); err != nil {
			g.shutdown()
			_ = o.store.Close()
			return nil, err
		}
	}
	g.sess = newSession(g, newDialer(g, u))
	if o.updates != nil {
		g.hs.upd = newUpdater(g, o.updates, o.installed)
		g.hs.upd.wg.Add(1)
		go g.hs.upd.run()
	}
	first := make(chan error, 1)
	go g.sess.run(first)
	go g.out.loop()
	if g.out.qos0 != nil {
		go g.out.qos0Loop()
	}
	if o.sessionRefresh > 0 {
		go g.refreshLoop()
	}
	if o.statsEvery > 0 {
		go g.statsLoop()
	}
	select {
	case err = <-first:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		g.stop(context.Background())
		if _, ok := err.(*ConnectError); ok {
			return nil, err
		}
		return nil, fmt.Errorf("tbgateway: dial %s: %w", safeURL(u), err)
	}
	g.log.Info("tbgateway: dialed", "broker", safeURL(u), "client_id", o.clientID, "offline_start", o.startOffline)
	return g, nil
}

// safeURL is the broker URL without user information: an access token may
// be given there, and it must never reach a log or an error.
func safeURL(u *url.URL) string {
	v := *u
	v.User = nil
	return v.String()
}

// parseDialOptions applies opts over the defaults and checks the broker
// URL.
func parseDialOptions(broker string, opts []Option) (options, *url.URL, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, nil, err
		}
	}
	u, err := url.Parse(broker)
	if err != nil || u.Host == "" {
		return o, nil, invalid("broker URL %q", broker)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "tcps", "ws", "wss":
	default:
		return o, nil, invalid("broker URL scheme %q", u.Scheme)
	}
	return o, u, nil
}

// Close ends the session. While connected it first waits, until ctx ends,
// for queued data to be sent and acknowledged; then handlers are told to
// stop through their contexts, pending requests fail with ErrClosed, and the
// MQTT connection is closed cleanly. Data still queued then fails with
// ErrClosed, or stays in the WithQueueStore store. It waits for the
// gateway's goroutines and running handlers until ctx ends, and returns
// by then in every state (offline, pacing, announcing). A write paho
// began on a connection that was cut just before can keep one goroutine
// of it for up to the write timeout (WithConnectTimeout); Close waits for
// it as long as ctx allows. Every call made after Close returns
// ErrClosed. Close is idempotent.
func (g *Gateway) Close(ctx context.Context) error {
	first := false
	g.life.once.Do(func() { first = true })
	if !first {
		return nil
	}
	g.out.flush(ctx)
	err := g.stop(ctx)
	g.log.Info("tbgateway: closed")
	return err
}

// stop ends every goroutine of the gateway, waiting until ctx ends.
func (g *Gateway) stop(ctx context.Context) error {
	close(g.life.done)
	g.life.cancel()
	var err error
	for _, ch := range []<-chan struct{}{g.sess.stopped, g.out.stopped} {
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	g.shutdown()
	if u := g.hs.upd; u != nil {
		done := make(chan struct{})
		go func() { u.wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	for _, ch := range []<-chan struct{}{g.lanes.updates.Done(), g.lanes.rpcs.Done(), g.lanes.callbacks.Done(), g.lanes.events.Done()} {
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if g.out.durable != nil {
		if cerr := g.out.durable.s.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

func (g *Gateway) shutdown() {
	g.life.cancel()
	g.lanes.updates.Close()
	g.lanes.rpcs.Close()
	g.failPending(ErrClosed)
	// Without a durable store, what is still queued is lost with the
	// process: say so to whoever waits.
	for _, r := range g.out.queue.Close() {
		if r.Waiter != nil {
			g.fail(r.Waiter, ErrClosed)
		}
	}
	g.lanes.callbacks.Close()
	g.lanes.events.Close()
}

func (g *Gateway) closed() bool {
	select {
	case <-g.life.done:
		return true
	default:
		return false
	}
}

// State returns the connection's state: StateUp while connected,
// StateReconnecting while an attempt is under way, else StateDown (also
// after Close).
func (g *Gateway) State() ConnectionState {
	if g.closed() {
		return StateDown
	}
	switch s, _ := g.sess.current(); s {
	case linkUp:
		return StateUp
	case linkConnecting, linkStarting:
		return StateReconnecting
	}
	return StateDown
}

// Connected reports whether the connection is up right now: connected,
// subscribed, and data flowing (State is StateUp).
func (g *Gateway) Connected() bool { return g.State() == StateUp }

// ConnectionState is a state of the gateway's connection.
type ConnectionState int

// Connection states reported to WithConnectionListener.
const (
	// StateUp: connected, subscribed and the session limits known; data
	// flows, each device's behind its announcement.
	StateUp ConnectionState = iota + 1
	// StateDown: the connection was lost; data is queued meanwhile.
	StateDown
	// StateReconnecting: an attempt to reconnect is starting.
	StateReconnecting
)

// String returns the state's name.
func (s ConnectionState) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	case StateReconnecting:
		return "reconnecting"
	}
	return "unknown"
}

// ConnectionEvent is a change of the connection's state.
type ConnectionEvent struct {
	State ConnectionState
	Err   error // why the connection went down
}

// event tells the application's listener, in order, off the session's
// goroutine.
func (g *Gateway) event(e ConnectionEvent) {
	if f := g.opts.onConnection; f != nil {
		if !g.lanes.events.Submit(func() { f(e) }) {
			g.stats.eventsLost.Add(1)
		}
	}
}

// fail fails a call; its callback, if any, runs on the callback lane.
func (g *Gateway) fail(w *outbox.Waiter, err error) {
	if w.Fail(err) {
		if cb := w.Callback(); cb != nil {
			g.runCallbacks(1, func() { cb(err) })
		}
	}
}

// runCallbacks runs n callbacks of async publishes, in one job, on the
// callback lane, in order. Once the lane is closed (Close), on the
// caller's goroutine: an outcome is never lost.
func (g *Gateway) runCallbacks(n int, job func()) {
	g.lanes.cbPending.Add(int64(n))
	run := func() {
		defer g.lanes.cbPending.Add(-int64(n))
		job()
	}
	if !g.lanes.callbacks.Submit(run) {
		run()
	}
}

// callbacksBehind reports whether more outcomes wait for their callback
// than the queue holds records: a slow callback then holds back the
// sender and the publishers, as a full queue does, instead of memory
// growing.
func (g *Gateway) callbacksBehind() bool {
	return g.lanes.cbPending.Load() > int64(g.opts.queueMsgs)
}

// waitCallbacks holds an async publish while the callbacks are behind:
// the publisher slows with its callback, or fails at once under FailFast.
func (g *Gateway) waitCallbacks(ctx context.Context) error {
	if !g.callbacksBehind() {
		return nil
	}
	if g.opts.overflow == outbox.FailFast {
		g.stats.refused.Add(1)
		return fmt.Errorf("%w: the callbacks are behind", ErrQueueFull)
	}
	return g.lanes.callbacks.WaitUntil(ctx, g.life.done, func() bool { return !g.callbacksBehind() })
}

func (g *Gateway) failRecords(m *outbox.Message, err error) {
	for _, r := range m.Records {
		if r.Waiter != nil {
			g.fail(r.Waiter, err)
		}
	}
}

// recordAcked keeps the device registry in step with acknowledged
// connects and disconnects, and notes each device's last uplink (for
// WithSessionRefresh).
func (g *Gateway) recordAcked(r *outbox.Record) {
	if r.Kind != outbox.Raw {
		// Telemetry and attributes: only Kind is read, in the cache line
		// the acknowledgement reads anyway.
		if g.opts.sessionRefresh > 0 {
			g.reg.noteUplink(r.DeviceName)
		}
		return
	}
	switch r.Topic {
	case topicGatewayConnect:
		g.reg.add(r.DeviceName, r.Note)
		if r.Announce {
			g.stats.announced.Add(1)
		}
		return
	case topicGatewayDisconnect:
		g.reg.remove(r.DeviceName)
		return
	}
	if g.opts.sessionRefresh > 0 {
		g.reg.noteUplink(r.DeviceName)
	}
}

// The outbound calls of the concept files, all through the sender.
func (g *Gateway) publish(ctx context.Context, r *outbox.Record) error { return g.out.publish(ctx, r) }
func (g *Gateway) send(ctx context.Context, recs []*outbox.Record) error {
	return g.out.send(ctx, recs)
}
func (g *Gateway) enqueue(ctx context.Context, recs []*outbox.Record, done func(error)) error {
	return g.out.enqueue(ctx, recs, done)
}
func (g *Gateway) limit() sizeLimit { return g.out.limit() }
