package tbtest_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

const waitTimeout = 3 * time.Second

var clientSeq atomic.Int64

// gw is a raw paho client acting as a gateway.
type gw struct {
	t    *testing.T
	c    paho.Client
	in   inbox[paho.Message]
	lost chan error
}

// inbox keeps the messages a test client received until the test takes
// them; both clients' messages go through one.
type inbox[M any] struct {
	mu      sync.Mutex
	msgs    []M
	arrived chan struct{} // closed and replaced when a message arrives
	topic   func(M) string
}

func newInbox[M any](topic func(M) string) inbox[M] {
	return inbox[M]{arrived: make(chan struct{}), topic: topic}
}

func (b *inbox[M]) put(m M) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	close(b.arrived)
	b.arrived = make(chan struct{})
	b.mu.Unlock()
}

// next waits for and removes the first message on topic.
func (b *inbox[M]) next(t *testing.T, topic string) M {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		b.mu.Lock()
		for i, m := range b.msgs {
			if b.topic(m) == topic {
				b.msgs = append(b.msgs[:i], b.msgs[i+1:]...)
				b.mu.Unlock()
				return m
			}
		}
		arrived := b.arrived
		b.mu.Unlock()
		select {
		case <-arrived:
		case <-timeout:
			t.Fatalf("no message on %s", topic)
			var zero M
			return zero
		}
	}
}

// count returns the number of messages on topic so far.
func (b *inbox[M]) count(topic string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.msgs {
		if b.topic(m) == topic {
			n++
		}
	}
	return n
}

// dial connects a paho client with token as username; it fails the test on
// a refused connection.
func dial(t *testing.T, s *tbtest.Server, token string, opts ...func(*paho.ClientOptions)) *gw {
	t.Helper()
	g, err := tryDial(t, s, token, opts...)
	require.NoError(t, err)
	return g
}

func tryDial(t *testing.T, s *tbtest.Server, token string, opts ...func(*paho.ClientOptions)) (*gw, error) {
	t.Helper()
	g := &gw{t: t, lost: make(chan error, 1), in: newInbox(paho.Message.Topic)}
	o := paho.NewClientOptions().
		AddBroker(s.URL()).
		SetClientID(fmt.Sprintf("gw-%d", clientSeq.Add(1))).
		SetUsername(token).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(2 * time.Second).
		SetWriteTimeout(2 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { g.in.put(m) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case g.lost <- err:
			default:
			}
		})
	if tc := s.TLSConfig(); tc != nil {
		o.SetTLSConfig(tc)
	}
	for _, f := range opts {
		f(o)
	}
	g.c = paho.NewClient(o)
	tok := g.c.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		return nil, errors.New("connect timeout")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { g.c.Disconnect(0) })
	return g, nil
}

// pub publishes at QoS 1 and waits for the PUBACK.
func (g *gw) pub(topic, payload string) {
	g.t.Helper()
	tok := g.c.Publish(topic, 1, false, payload)
	require.True(g.t, tok.WaitTimeout(waitTimeout), "no PUBACK for %s %s", topic, payload)
	require.NoError(g.t, tok.Error())
}

// pubAsync publishes at QoS 1 without waiting.
func (g *gw) pubAsync(topic, payload string) paho.Token {
	return g.c.Publish(topic, 1, false, payload)
}

// sub subscribes and returns the SUBACK code of the filter.
func (g *gw) sub(filter string, qos byte) byte {
	g.t.Helper()
	tok := g.c.Subscribe(filter, qos, nil)
	require.True(g.t, tok.WaitTimeout(waitTimeout))
	st, ok := tok.(*paho.SubscribeToken)
	require.True(g.t, ok)
	return st.Result()[filter]
}

// next waits for and removes the first received message on topic.
func (g *gw) next(topic string) paho.Message {
	g.t.Helper()
	return g.in.next(g.t, topic)
}

// received returns the number of messages received on topic so far.
func (g *gw) received(topic string) int { return g.in.count(topic) }

// waitLost waits until the server closed the connection.
func (g *gw) waitLost() {
	g.t.Helper()
	select {
	case <-g.lost:
	case <-time.After(waitTimeout):
		g.t.Fatal("connection was not closed by the server")
	}
}

func waitFor(t *testing.T, s *tbtest.Server, cond func() bool, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, s.WaitFor(ctx, cond), msg)
}

func connected(s *tbtest.Server, name string) bool {
	d, ok := s.Device(name)
	return ok && d.Connected
}

func lastRejection(t *testing.T, s *tbtest.Server) tbtest.Rejection {
	t.Helper()
	rs := s.Rejections()
	require.NotEmpty(t, rs)
	return rs[len(rs)-1]
}

// --- test vectors ---

type vector struct {
	Name    string `json:"name"`
	Topic   string `json:"topic"`
	Payload string `json:"payload"`
}

var (
	vectorsOnce sync.Once
	vectors     map[string]map[string]vector
)

// vec returns a case of testdata/vectors/<file>.json, a copy of the
// project's shared wire vectors.
func vec(t *testing.T, file, name string) vector {
	t.Helper()
	vectorsOnce.Do(func() {
		vectors = map[string]map[string]vector{}
		for _, f := range []string{"uplink", "downlink", "never-send"} {
			var list []vector
			b, err := os.ReadFile(filepath.Join("testdata", "vectors", f+".json"))
			if err == nil {
				_ = json.Unmarshal(b, &list)
			}
			vectors[f] = map[string]vector{}
			for _, v := range list {
				vectors[f][v.Name] = v
			}
		}
	})
	v, ok := vectors[file][name]
	require.True(t, ok, "vector %s/%s not found", file, name)
	return v
}

// --- raw MQTT 3.1.1 client for packet-exact assertions ---

type wire struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func encLen(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

func encStr(s string) []byte {
	b := make([]byte, 2, 2+len(s))
	binary.BigEndian.PutUint16(b, uint16(len(s)))
	return append(b, s...)
}

func packet(typ byte, body []byte) []byte {
	return append(append([]byte{typ}, encLen(len(body))...), body...)
}

// rawConnect opens a TCP connection and sends CONNECT (MQTT 3.1.1, clean
// session). It returns the client and the CONNACK return code.
func rawConnect(t *testing.T, s *tbtest.Server, clientID, username string, password *string) (*wire, byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr(), waitTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	w := &wire{t: t, c: c, r: bufio.NewReader(c)}
	flags := byte(0x02)
	var pl []byte
	pl = append(pl, encStr(clientID)...)
	if username != "" {
		flags |= 0x80
		pl = append(pl, encStr(username)...)
	}
	if password != nil {
		flags |= 0x40
		pl = append(pl, encStr(*password)...)
	}
	body := append(append(encStr("MQTT"), 4, flags, 0, 60), pl...)
	w.write(packet(0x10, body))
	typ, b, err := w.read()
	require.NoError(t, err)
	require.Equal(t, byte(0x20), typ, "CONNACK expected")
	require.Len(t, b, 2)
	return w, b[1]
}

func (w *wire) write(b []byte) {
	w.t.Helper()
	_, err := w.c.Write(b)
	require.NoError(w.t, err)
}

// publish sends a PUBLISH (id is used for QoS > 0).
func (w *wire) publish(topic string, payload []byte, qos byte, id uint16) {
	w.t.Helper()
	body := encStr(topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	body = append(body, payload...)
	w.write(packet(0x30|qos<<1, body))
}

// read reads one packet: type nibble (as 0xN0) and body; io.EOF when the
// server closed the connection.
func (w *wire) read() (byte, []byte, error) {
	_ = w.c.SetReadDeadline(time.Now().Add(waitTimeout))
	h, err := w.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		b, err := w.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(w.r, body); err != nil {
		return 0, nil, err
	}
	return h & 0xf0, body, nil
}

// expectPuback reads the next packet and requires a PUBACK for id.
func (w *wire) expectPuback(id uint16) {
	w.t.Helper()
	typ, b, err := w.read()
	require.NoError(w.t, err, "PUBACK expected")
	require.Equal(w.t, byte(0x40), typ, "PUBACK expected")
	require.Equal(w.t, id, binary.BigEndian.Uint16(b))
}

// expectClosed requires that the server closes the connection without
// sending anything else.
func (w *wire) expectClosed() {
	w.t.Helper()
	typ, _, err := w.read()
	require.Error(w.t, err, "expected close, got packet type %#x", typ)
	var ne net.Error
	require.False(w.t, errors.As(err, &ne) && ne.Timeout(), "connection not closed: %v", err)
}

// ping sends PINGREQ and requires PINGRESP as the next packet: everything
// sent before was answered (or not) by then.
func (w *wire) ping() {
	w.t.Helper()
	w.write([]byte{0xc0, 0})
	typ, _, err := w.read()
	require.NoError(w.t, err)
	require.Equal(w.t, byte(0xd0), typ, "PINGRESP expected")
}

// --- MQTT 5 client (eclipse/paho.golang) ---

// gw5 is a paho.golang MQTT 5 client acting as a gateway.
type gw5 struct {
	t       *testing.T
	c       *paho5.Client
	connack *paho5.Connack
	in      inbox[*paho5.Publish]
	disc    chan byte  // reason code of a server DISCONNECT
	gone    chan error // the connection ended without DISCONNECT
}

// dial5 connects an MQTT 5 client with token as user name; it fails the
// test on a refused connection.
func dial5(t *testing.T, s *tbtest.Server, token string) *gw5 {
	t.Helper()
	g, err := tryDial5(t, s, &paho5.Connect{Username: token, UsernameFlag: true})
	require.NoError(t, err)
	return g
}

func tryDial5(t *testing.T, s *tbtest.Server, cp *paho5.Connect) (*gw5, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), waitTimeout)
	require.NoError(t, err)
	g := &gw5{t: t, in: newInbox(func(p *paho5.Publish) string { return p.Topic }), disc: make(chan byte, 1), gone: make(chan error, 1)}
	g.c = paho5.NewClient(paho5.ClientConfig{
		Conn:          conn,
		PacketTimeout: waitTimeout,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(r paho5.PublishReceived) (bool, error) {
			g.in.put(r.Packet)
			return true, nil
		}},
		OnServerDisconnect: func(d *paho5.Disconnect) {
			select {
			case g.disc <- d.ReasonCode:
			default:
			}
		},
		OnClientError: func(err error) {
			select {
			case g.gone <- err:
			default:
			}
		},
	})
	if cp.ClientID == "" {
		cp.ClientID = fmt.Sprintf("gw5-%d", clientSeq.Add(1))
	}
	cp.CleanStart = true
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	ca, err := g.c.Connect(ctx, cp)
	g.connack = ca
	if err != nil {
		_ = conn.Close()
		return g, err
	}
	t.Cleanup(func() {
		_ = g.c.Disconnect(&paho5.Disconnect{})
		<-g.c.Done()
	})
	return g, nil
}

// pub publishes and returns the PUBACK reason code (0 for QoS 0) and the
// error paho.golang reports.
func (g *gw5) pub(topic, payload string, qos byte) (byte, error) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	pr, err := g.c.Publish(ctx, &paho5.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)})
	if pr == nil {
		return 0, err
	}
	return pr.ReasonCode, err
}

// ok publishes at QoS 1 and requires a successful PUBACK.
func (g *gw5) ok(topic, payload string) {
	g.t.Helper()
	code, err := g.pub(topic, payload, 1)
	require.NoError(g.t, err)
	require.Equal(g.t, byte(0), code)
}

// next waits for and removes the first received message on topic.
func (g *gw5) next(topic string) *paho5.Publish {
	g.t.Helper()
	return g.in.next(g.t, topic)
}

// waitDisconnect waits for the server's DISCONNECT and returns its code.
func (g *gw5) waitDisconnect() byte {
	g.t.Helper()
	select {
	case code := <-g.disc:
		return code
	case err := <-g.gone:
		g.t.Fatalf("connection closed without DISCONNECT: %v", err)
	case <-time.After(waitTimeout):
		g.t.Fatal("no DISCONNECT from the server")
	}
	return 0
}

// waitCut waits until the server closed the TCP connection without a
// DISCONNECT packet.
func (g *gw5) waitCut() {
	g.t.Helper()
	select {
	case code := <-g.disc:
		g.t.Fatalf("DISCONNECT %#x instead of a plain close", code)
	case <-g.gone:
	case <-time.After(waitTimeout):
		g.t.Fatal("connection not closed by the server")
	}
}

// --- raw MQTT 5 packets ---

// props encodes MQTT 5 properties with their length.
func props(p ...byte) []byte { return append(encLen(len(p)), p...) }

// userProperty is property 0x26.
func userProperty(k, v string) []byte {
	return append(append([]byte{0x26}, encStr(k)...), encStr(v)...)
}

// rawConnect5 opens a TCP connection and sends an MQTT 5 CONNECT (clean
// start, no properties). It returns the client and the CONNACK body.
func rawConnect5(t *testing.T, s *tbtest.Server, clientID, username string) (*wire, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr(), waitTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	w := &wire{t: t, c: c, r: bufio.NewReader(c)}
	flags := byte(0x02)
	pl := encStr(clientID)
	if username != "" {
		flags |= 0x80
		pl = append(pl, encStr(username)...)
	}
	body := append(append(encStr("MQTT"), 5, flags, 0, 60), props()...)
	w.write(packet(0x10, append(body, pl...)))
	typ, b, err := w.read()
	require.NoError(t, err)
	require.Equal(t, byte(0x20), typ, "CONNACK expected")
	return w, b
}

// publish5 sends an MQTT 5 PUBLISH with the given encoded properties.
func (w *wire) publish5(topic string, payload []byte, qos byte, id uint16, properties []byte) {
	w.t.Helper()
	body := encStr(topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	body = append(append(body, properties...), payload...)
	w.write(packet(0x30|qos<<1, body))
}

// expect reads the next packet and requires its type and exact body.
func (w *wire) expect(typ byte, body []byte, what string) {
	w.t.Helper()
	got, b, err := w.read()
	require.NoError(w.t, err, what)
	require.Equal(w.t, typ, got, what)
	require.Equal(w.t, body, b, what)
}
