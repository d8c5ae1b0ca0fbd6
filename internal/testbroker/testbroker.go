// Package testbroker gives the SDK's wire tests a plain MQTT broker: an
// in-process mochi broker on a random loopback port by default, or the
// broker named by the TBGATEWAY_TEST_BROKER environment variable (a
// Mosquitto started by .ci/run), so that the same tests prove the SDK
// against two broker implementations. An Observer records every message
// with its exact bytes; Publish plays the server's part.
package testbroker

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// EnvBroker names the environment variable that selects an external broker.
const EnvBroker = "TBGATEWAY_TEST_BROKER"

// Broker is a running broker.
type Broker struct {
	URL      string
	Name     string // "mochi" or "external"
	server   *mqtt.Server
	external bool
	stop     sync.Once

	mu     sync.Mutex
	kicked map[string]*mqtt.Client // by Kick, until their session is gone
}

// Start returns the external broker if EnvBroker is set (it must be a
// loopback address), else starts mochi and stops it at the end of the test.
func Start(tb testing.TB) *Broker {
	tb.Helper()
	if u := os.Getenv(EnvBroker); u != "" {
		pu, err := url.Parse(u)
		if err != nil || (pu.Hostname() != "127.0.0.1" && pu.Hostname() != "localhost" && pu.Hostname() != "::1") {
			tb.Fatalf("%s=%q: only loopback brokers are allowed", EnvBroker, u)
		}
		return &Broker{URL: u, Name: "external", external: true}
	}
	s := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		tb.Fatal(err)
	}
	b := &Broker{Name: "mochi", server: s, kicked: map[string]*mqtt.Client{}}
	if err := s.AddHook(&kickGuard{b: b}, nil); err != nil {
		tb.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		tb.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		tb.Fatal(err)
	}
	b.URL = "tcp://" + l.Address()
	tb.Cleanup(b.Stop)
	return b
}

// kickGuard holds a client that reconnects after Kick until the kicked
// connection's clean session is gone. mochi clears a clean session when
// its connection ends, by client id: if the same client has connected and
// subscribed again by then, that removes the new connection from the
// broker's clients, and nothing is delivered to it any more.
type kickGuard struct {
	mqtt.HookBase
	b *Broker
}

func (h *kickGuard) ID() string           { return "kick-guard" }
func (h *kickGuard) Provides(b byte) bool { return b == mqtt.OnConnect }
func (h *kickGuard) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	h.b.mu.Lock()
	old := h.b.kicked[cl.ID]
	delete(h.b.kicked, cl.ID)
	h.b.mu.Unlock()
	if old == nil || !old.Properties.Clean {
		return nil
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if c, ok := h.b.server.Clients.Get(cl.ID); !ok || c != old {
			return nil
		}
	}
	return nil
}

// External reports whether the broker is the external one.
func (b *Broker) External() bool { return b.external }

// Message is one received publish.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
}

// Observer is a raw paho client subscribed to a filter that records what it
// receives.
type Observer struct {
	client  paho.Client
	mu      sync.Mutex
	msgs    []Message
	changed chan struct{}
}

func clientID(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func (b *Broker) connect(tb testing.TB, prefix string, handler paho.MessageHandler) paho.Client {
	tb.Helper()
	o := paho.NewClientOptions().AddBroker(b.URL).SetClientID(clientID(prefix)).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(true)
	if handler != nil {
		o.SetDefaultPublishHandler(handler)
	}
	c := paho.NewClient(o)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		tb.Fatalf("testbroker: connect to %s: %v", b.URL, t.Error())
	}
	tb.Cleanup(func() { c.Disconnect(50) })
	return c
}

// Observe subscribes a recording client to filter at QoS 1.
func (b *Broker) Observe(tb testing.TB, filter string) *Observer {
	tb.Helper()
	o := &Observer{changed: make(chan struct{})}
	o.client = b.connect(tb, "obs-", nil)
	t := o.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		o.mu.Lock()
		o.msgs = append(o.msgs, Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), QoS: m.Qos()})
		close(o.changed)
		o.changed = make(chan struct{})
		o.mu.Unlock()
	})
	if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		tb.Fatalf("testbroker: subscribe %s: %v", filter, t.Error())
	}
	return o
}

// Messages returns what arrived on topic so far ("" for every topic).
func (o *Observer) Messages(topic string) []Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []Message
	for _, m := range o.msgs {
		if topic == "" || m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// Wait waits until n messages arrived on topic and returns them; the test
// fails after timeout.
func (o *Observer) Wait(tb testing.TB, topic string, n int, timeout time.Duration) []Message {
	tb.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		ch := o.changed
		o.mu.Unlock()
		if got := o.Messages(topic); len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-deadline.C:
			got := o.Messages(topic)
			tb.Fatalf("testbroker: waited %v for %d messages on %q, got %d: %s", timeout, n, topic, len(got), format(got))
			return nil
		}
	}
}

// WaitUntil waits for the first message on which match holds and returns
// every message received up to it, that one included; the test fails
// after timeout. As the broker delivers one client's messages in order,
// a marker found this way tells that what its sender published before it
// has arrived too.
func (o *Observer) WaitUntil(tb testing.TB, timeout time.Duration, match func(Message) bool) []Message {
	tb.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		ch := o.changed
		o.mu.Unlock()
		got := o.Messages("")
		for i, m := range got {
			if match(m) {
				return got[:i+1]
			}
		}
		select {
		case <-ch:
		case <-deadline.C:
			tb.Fatalf("testbroker: waited %v for a matching message, got %d: %s", timeout, len(got), format(got))
			return nil
		}
	}
}

func format(ms []Message) string {
	s := ""
	for _, m := range ms {
		s += fmt.Sprintf("\n  %s %s", m.Topic, m.Payload)
	}
	return s
}

// Publisher is a raw client that plays the server.
type Publisher struct{ client paho.Client }

// Publisher connects a raw client for publishing downlinks.
func (b *Broker) Publisher(tb testing.TB) *Publisher {
	return &Publisher{client: b.connect(tb, "pub-", nil)}
}

// Publish sends payload on topic at QoS 1 and waits for the broker's ack.
func (p *Publisher) Publish(tb testing.TB, topic string, payload string) {
	tb.Helper()
	t := p.client.Publish(topic, 1, false, []byte(payload))
	if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		tb.Fatalf("testbroker: publish %s: %v", topic, t.Error())
	}
}

// Stop shuts the embedded broker down, cutting every connection.
func (b *Broker) Stop() {
	if b.server != nil {
		b.stop.Do(func() { closeMochi(b.server) })
	}
}

// closeMochi closes a mochi server. mochi 2.7.9's Close read-locks its
// clients twice over while a client that is going away may be waiting to
// delete itself: a deadlock. So the clients are stopped first, and Close
// waits until they have deleted themselves. Only the network clients:
// the inline client (Options.InlineClient) is in Clients too but never
// leaves, so counting it made every Stop wait out the whole second.
func closeMochi(s *mqtt.Server) {
	for _, cl := range s.Clients.GetAll() {
		if !cl.Net.Inline {
			cl.Stop(errors.New("testbroker: stopping"))
		}
	}
	// A client deletes itself when its connection's goroutine ends, which
	// mochi signals to nobody: poll, bounded in case one holds a session
	// that outlives its connection (those are not deleted at all).
	for deadline := time.Now().Add(time.Second); networkClients(s) > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	_ = s.Close()
}

// networkClients counts the clients other than the inline one.
func networkClients(s *mqtt.Server) int {
	n := 0
	for _, cl := range s.Clients.GetAll() {
		if !cl.Net.Inline {
			n++
		}
	}
	return n
}

// Kick closes the connection of the client with this id (embedded broker
// only) and reports whether it found it.
func (b *Broker) Kick(id string) bool {
	if b.server == nil {
		return false
	}
	cl, ok := b.server.Clients.Get(id)
	if !ok {
		return false
	}
	b.mu.Lock()
	b.kicked[id] = cl
	b.mu.Unlock()
	cl.Stop(fmt.Errorf("testbroker: kicked"))
	return true
}

// EnvMosquitto names the environment variable with the path of a mosquitto
// binary: with it, Restartable runs a real Mosquitto process.
const EnvMosquitto = "TBGATEWAY_MOSQUITTO"

// Restartable is a broker the test owns: it can stop it (killing every
// connection) and start it again on the same port, and it records every
// v1/gateway/telemetry message the broker accepted, in order, across
// restarts. With EnvMosquitto set it is a Mosquitto process (persistence on,
// stopped with SIGTERM so it saves its queues, and a persistent subscriber
// session records the messages); otherwise an embedded mochi broker whose
// hook records each message before it is acknowledged.
type Restartable struct {
	URL  string
	Kind string

	mu   sync.Mutex
	msgs [][]byte

	start func() error
	stop  func()
}

// Messages returns the recorded telemetry payloads.
func (r *Restartable) Messages() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.msgs...)
}

func (r *Restartable) record(p []byte) {
	r.mu.Lock()
	r.msgs = append(r.msgs, append([]byte(nil), p...))
	r.mu.Unlock()
}

// Stop kills the broker.
func (r *Restartable) Stop() { r.stop() }

// Start starts it again on the same port.
func (r *Restartable) Start() error { return r.start() }

// StartRestartable starts a restartable broker for the test.
func StartRestartable(tb testing.TB) *Restartable {
	tb.Helper()
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := probe.Addr().String()
	_ = probe.Close()
	r := &Restartable{URL: "tcp://" + addr}
	if bin := os.Getenv(EnvMosquitto); bin != "" {
		r.Kind = "mosquitto"
		startMosquitto(tb, r, bin, addr)
	} else {
		r.Kind = "mochi"
		startMochi(tb, r, addr)
	}
	if err := r.start(); err != nil {
		tb.Fatal(err)
	}
	return r
}

// recorder is a mochi hook that records telemetry before the PUBACK.
type recorder struct {
	mqtt.HookBase
	r *Restartable
}

func (h *recorder) ID() string { return "recorder" }
func (h *recorder) Provides(b byte) bool {
	return b == mqtt.OnPublish
}
func (h *recorder) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.TopicName == "v1/gateway/telemetry" {
		h.r.record(pk.Payload)
	}
	return pk, nil
}

func startMochi(tb testing.TB, r *Restartable, addr string) {
	var s *mqtt.Server
	var mu sync.Mutex
	r.start = func() error {
		mu.Lock()
		defer mu.Unlock()
		srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		_ = srv.AddHook(new(auth.AllowHook), nil)
		_ = srv.AddHook(&recorder{r: r}, nil)
		var err error
		for i := 0; i < 100; i++ { // the port may linger briefly after Close
			if err = srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		s = srv
		return srv.Serve()
	}
	r.stop = func() {
		mu.Lock()
		defer mu.Unlock()
		if s != nil {
			closeMochi(s)
			s = nil
		}
	}
	tb.Cleanup(r.stop)
}

func startMosquitto(tb testing.TB, r *Restartable, bin, addr string) {
	dir := tb.TempDir()
	host, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(
		"listener %s %s\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 0\nmax_inflight_messages 1\nautosave_interval 0\n%s",
		port, host, dir, userLine())), 0o644); err != nil {
		tb.Fatal(err)
	}

	var cmd *exec.Cmd
	var mu sync.Mutex
	var sub paho.Client
	r.start = func() error {
		mu.Lock()
		defer mu.Unlock()
		cmd = exec.Command(bin, "-c", conf)
		if err := cmd.Start(); err != nil {
			return err
		}
		for i := 0; i < 200; i++ {
			if c, err := net.Dial("tcp", addr); err == nil {
				_ = c.Close()
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if sub == nil {
			// A persistent session: what the broker accepted while the
			// subscriber was away is kept for it, also across a SIGTERM.
			o := paho.NewClientOptions().AddBroker(r.URL).SetClientID("tbgw-fault-recorder").
				SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond).
				SetOrderMatters(true)
			sub = paho.NewClient(o)
			if t := sub.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
				return fmt.Errorf("recorder connect: %v", t.Error())
			}
			if t := sub.Subscribe("v1/gateway/telemetry", 1, func(_ paho.Client, m paho.Message) { r.record(m.Payload()) }); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
				return fmt.Errorf("recorder subscribe: %v", t.Error())
			}
		}
		return nil
	}
	r.stop = func() {
		mu.Lock()
		defer mu.Unlock()
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			cmd = nil
		}
	}
	tb.Cleanup(func() {
		r.stop()
		if sub != nil {
			sub.Disconnect(0)
		}
	})
}

// userLine keeps mosquitto from dropping root privileges (as it does by
// default), which would leave it unable to write its persistence file in
// the test's temporary directory.
func userLine() string {
	if os.Geteuid() == 0 {
		return "user root\n"
	}
	return ""
}

// WaitQuiet waits until no new message was recorded for quiet, or timeout.
func (r *Restartable) WaitQuiet(quiet, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	last, since := -1, time.Now()
	for time.Now().Before(deadline) {
		r.mu.Lock()
		n := len(r.msgs)
		r.mu.Unlock()
		if n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= quiet {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
