package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

const waitTimeout = 5 * time.Second

// syncBuffer is an output the server's goroutines write to concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs the command in the background; stop ends it and returns its
// output.
func start(t *testing.T, args ...string) (srv *tbtest.Server, stop func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	started := make(chan *tbtest.Server, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, out, started) }()
	select {
	case srv = <-started:
	case err := <-done:
		cancel()
		t.Fatalf("run: %v\n%s", err, out)
	case <-time.After(waitTimeout):
		cancel()
		t.Fatal("the server did not start")
	}
	stopped := false
	stop = func() string {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-done)
		}
		return out.String()
	}
	t.Cleanup(func() { stop() })
	return srv, stop
}

// client is a plain MQTT 3.1.1 gateway client (eclipse/paho.mqtt.golang).
type client struct {
	t    *testing.T
	c    paho.Client
	msgs chan paho.Message
	lost chan error
}

func dial(t *testing.T, url, token string) *client {
	t.Helper()
	cl := &client{t: t, msgs: make(chan paho.Message, 64), lost: make(chan error, 1)}
	o := paho.NewClientOptions().AddBroker(url).SetClientID("cmd-test").SetUsername(token).
		SetAutoReconnect(false).SetConnectTimeout(waitTimeout).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { cl.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) { cl.lost <- err })
	cl.c = paho.NewClient(o)
	tok := cl.c.Connect()
	require.True(t, tok.WaitTimeout(waitTimeout))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { cl.c.Disconnect(0) })
	return cl
}

func (cl *client) pub(topic, payload string) {
	cl.t.Helper()
	tok := cl.c.Publish(topic, 1, false, payload)
	require.True(cl.t, tok.WaitTimeout(waitTimeout), "no PUBACK for %s", topic)
	require.NoError(cl.t, tok.Error())
}

// next returns the next downlink, which must be on topic.
func (cl *client) next(topic string) string {
	cl.t.Helper()
	select {
	case m := <-cl.msgs:
		require.Equal(cl.t, topic, m.Topic(), string(m.Payload()))
		return string(m.Payload())
	case <-time.After(waitTimeout):
		cl.t.Fatalf("no message on %s", topic)
		return ""
	}
}

type vector struct {
	Name    string `json:"name"`
	Topic   string `json:"topic"`
	Payload string `json:"payload"`
}

// vectors reads a file of the project's wire vectors (tbtest's copy of
// the shared ones).
func vectors(t *testing.T, file string) []vector {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "tbtest", "testdata", "vectors", file))
	require.NoError(t, err)
	var vs []vector
	require.NoError(t, json.Unmarshal(b, &vs))
	return vs
}

// Every documented uplink example, published in file order by one real
// MQTT client, is stored or answered as WIRE.md says; the documented
// two-scope attribute request closes the connection.
func TestRunServesTheVectors(t *testing.T) {
	srv, stop := start(t, "-addr", "127.0.0.1:0", "-token", "tok,other")
	cl := dial(t, srv.URL(), "tok")
	gwName := srv.GatewayName("tok")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	point := func(dev, key string) tbtest.Point {
		p, ok := srv.Latest(dev, key)
		require.True(t, ok, "%s %s stored", dev, key)
		return p
	}
	var rpc chan json.RawMessage

	before := map[string]func(){
		"attribute-request-shared-keys": func() {
			srv.SetSharedAttributes("Device A", map[string]any{"key3": "v3"})
			assert.JSONEq(t, `{"device":"Device A","data":{"key3":"v3"}}`, cl.next("v1/gateway/attributes"))
		},
		"rpc-reply": func() {
			rpc = make(chan json.RawMessage, 1)
			go func() {
				r, err := srv.RPC(ctx, "Device A", "toggle_gpio", map[string]int{"pin": 1})
				assert.NoError(t, err)
				rpc <- r
			}()
			assert.Equal(t, `{"device":"Device A","data":{"id":0,"method":"toggle_gpio","params":{"pin":1}}}`, cl.next("v1/gateway/rpc"))
		},
	}
	check := map[string]func(){
		"connect-default-profile": func() {
			d, ok := srv.Device("Device A")
			require.True(t, ok)
			assert.Equal(t, "default", d.Profile)
			assert.True(t, d.Connected)
		},
		"connect-with-profile": func() {
			d, _ := srv.Device("Device A")
			assert.Equal(t, "default", d.Profile, "an existing device keeps its profile")
		},
		"disconnect": func() {
			d, _ := srv.Device("Device A")
			assert.False(t, d.Connected)
		},
		"attributes-two-devices": func() {
			want := map[string]any{"attribute1": "value1", "attribute2": int64(42)}
			assert.Equal(t, want, srv.ClientAttributes("Device A"))
			assert.Equal(t, want, srv.ClientAttributes("Device B"))
		},
		"attributes-doc-example": func() {
			a := srv.ClientAttributes("Device A")
			assert.Equal(t, 1.0, a["fw_version"], `"1.0" is cast to a double`)
			assert.Equal(t, int64(87), a["battery"])
		},
		"telemetry-two-devices": func() {
			assert.Equal(t, []tbtest.Point{{TS: 1483228800000, Value: int64(42)}, {TS: 1483228801000, Value: int64(43)}}, srv.Series("Device A", "temperature"))
			assert.Equal(t, []tbtest.Point{{TS: 1483228800000, Value: int64(80)}}, srv.Series("Device B", "humidity"))
		},
		"telemetry-doc-example": func() {
			assert.Equal(t, tbtest.Point{TS: 1700000000000, Value: 23.5}, point("Device A", "temperature"))
		},
		"telemetry-all-value-types": func() {
			assert.Equal(t, []tbtest.Point{{TS: 10000, Value: 3.0}, {TS: 20000, Value: 3.0}}, srv.Series("Device A", "key3"), "3.0 stays a double")
			assert.Equal(t, int64(4), point("Device A", "key4").Value)
			assert.Equal(t, json.RawMessage(`{"someNumber":42,"someArray":[1,2,3],"someNestedObject":{"key":"value"}}`), point("Device A", "key5").Value)
			assert.Equal(t, true, point("Device A", "key2").Value)
		},
		"telemetry-with-metadata": func() {
			assert.Equal(t, tbtest.Point{TS: 1700000000000, Value: int64(21)}, point("Device A", "temperature"))
			assert.NotContains(t, srv.TelemetryKeys("Device A"), "metadata")
		},
		"attribute-request-client-one-key": func() {
			assert.Equal(t, `{"id":1,"device":"Device A"}`, cl.next("v1/gateway/attributes/response"), "nothing found")
		},
		"attribute-request-shared-keys": func() {
			assert.Equal(t, `{"id":2,"device":"Device A","values":{"key3":"v3"}}`, cl.next("v1/gateway/attributes/response"))
		},
		"rpc-reply": func() {
			select {
			case r := <-rpc:
				assert.Equal(t, `{"success":true}`, string(r))
			case <-time.After(waitTimeout):
				t.Fatal("the RPC got no reply")
			}
		},
		"claim-two-devices": func() {
			assert.Equal(t, []tbtest.Claim{{SecretKey: "value_A", DurationMs: 60000}}, srv.Claims("Device A"))
			assert.Equal(t, []tbtest.Claim{{SecretKey: "value_B", DurationMs: 60000}}, srv.Claims("Device B"))
		},
		"claim-defaults": func() {
			assert.Equal(t, tbtest.Claim{DurationMs: tbtest.DefaultClaimDurationMs}, srv.Claims("Device A")[1])
		},
		"self-telemetry": func() {
			assert.Equal(t, 12.5, point(gwName, "cpu").Value)
		},
		"self-attribute-request": func() {
			assert.Equal(t, `{}`, cl.next("v1/devices/me/attributes/response/7"), "nothing set")
		},
		"self-session-limits": func() {
			assert.JSONEq(t, `{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":null,"telemetryMessages":null,"telemetryDataPoints":null},"gatewayRateLimits":{"messages":null,"telemetryMessages":null,"telemetryDataPoints":null}}`,
				cl.next("v1/devices/me/rpc/response/1"))
		},
	}
	for _, v := range vectors(t, "uplink.json") {
		if f := before[v.Name]; f != nil {
			f()
		}
		cl.pub(v.Topic, v.Payload)
		f := check[v.Name]
		require.NotNil(t, f, "no expectation for vector %s", v.Name)
		f()
	}
	assert.Empty(t, srv.Rejections())

	// The documented request form of never-send.json: PUBACK, then close.
	for _, v := range vectors(t, "never-send.json") {
		if v.Name != "attribute-request-doc-array-form" {
			continue
		}
		tok := cl.c.Publish(v.Topic, 1, false, v.Payload)
		select {
		case <-cl.lost:
		case <-time.After(waitTimeout):
			t.Fatal("the connection was not closed")
		}
		tok.Wait()
		rs := srv.Rejections()
		require.Len(t, rs, 1)
		assert.True(t, rs[0].Closed)
		assert.Contains(t, rs[0].Reason, "client is not a boolean")
	}

	out := stop()
	for _, want := range []string{
		"tbtest: fake ThingsBoard MQTT gateway API on tcp://127.0.0.1:",
		`gateway "Gateway tok": user name "tok"`,
		`gateway "Gateway other": user name "other"`,
		"mosquitto_pub -h 127.0.0.1 -p ",
		`msg="tbtest: gateway connected"`,
		`msg="tbtest: device created" device="Device A" profile=default gateway="Gateway tok"`,
		"topic=v1/gateway/telemetry qos=1 bytes=",
		"answer=PUBACK points=6",
		`msg="tbtest: downlink"`,
		`msg="tbtest: rejected"`,
		"closed=true",
		`device "Device A" profile "default": `,
		"tbtest: 1 refusals",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, "publish payload", "publish payloads only with -v")
}

func TestRunFlags(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-h"}, &out, nil)
	require.True(t, errors.Is(err, flag.ErrHelp))
	assert.Contains(t, out.String(), "-limit-points")

	require.ErrorContains(t, run(context.Background(), []string{"-token", " , "}, &out, nil), "at least one access token")
	require.ErrorContains(t, run(context.Background(), []string{"extra"}, &out, nil), "unexpected arguments")
	require.ErrorContains(t, run(context.Background(), []string{"-addr", "127.0.0.1:0", "-limit-messages", "many"}, &out, nil), "rate limit")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	require.ErrorContains(t, run(context.Background(), []string{"-addr", ln.Addr().String()}, &out, nil), "address already in use")
}

// The limits flags reach the server; -v prints payloads.
func TestRunLimits(t *testing.T) {
	srv, stop := start(t, "-addr", "127.0.0.1:0", "-max-payload", "300", "-max-devices", "1", "-limit-telemetry", "1:600", "-v")
	cl := dial(t, srv.URL(), tbtest.DefaultToken)
	cl.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	cl.pub("v1/gateway/telemetry", `{"B":[{"t":1}]}`) // no device B: a plain PUBACK on MQTT 3.1.1
	_, ok := srv.Device("B")
	assert.False(t, ok)
	tok := cl.c.Publish("v1/gateway/telemetry", 1, false, `{"A":[{"t":2}]}`)
	select {
	case <-cl.lost:
	case <-time.After(waitTimeout):
		t.Fatal("rate limit did not close the connection")
	}
	tok.Wait()
	assert.Equal(t, 1, srv.TelemetryCount("A"))
	cl = dial(t, srv.URL(), tbtest.DefaultToken)
	cl.c.Publish("v1/gateway/telemetry", 1, false, strings.Repeat("x", 300))
	select {
	case <-cl.lost:
	case <-time.After(waitTimeout):
		t.Fatal("an oversized packet did not close the connection")
	}
	out := stop()
	assert.Contains(t, out, `payload="{\"A\":[{\"t\":1}]}"`)
	assert.Contains(t, out, "Maximum number of devices reached!")
	assert.Contains(t, out, "exceeds maxPayloadSize 300")
}

// TestMosquittoPubAgainstTheCommand publishes every documented uplink
// example the way a person trying the API would: one mosquitto_pub per
// message against the running command (CI installs mosquitto-clients).
// Where mosquitto_pub is not installed, each message goes over a fresh
// paho connection instead, the same shape of traffic. The documented
// two-scope attribute request is refused and closes its connection.
func TestMosquittoPubAgainstTheCommand(t *testing.T) {
	srv, stop := start(t, "-addr", "127.0.0.1:0", "-token", "tok")
	defer stop()
	host, port, err := net.SplitHostPort(srv.Addr())
	require.NoError(t, err)
	publish := func(topic, payload string) {
		t.Helper()
		c := dial(t, srv.URL(), "tok")
		defer c.c.Disconnect(0)
		tok := c.c.Publish(topic, 1, false, payload)
		select {
		case <-tok.Done():
		case <-c.lost:
		case <-time.After(waitTimeout):
			t.Fatalf("no answer to %s", topic)
		}
	}
	if bin, err := exec.LookPath("mosquitto_pub"); err == nil {
		t.Logf("publishing with %s", bin)
		publish = func(topic, payload string) {
			t.Helper()
			out, err := exec.Command(bin, "-h", host, "-p", port, "-u", "tok", "-q", "1", "-t", topic, "-m", payload).CombinedOutput()
			// A refused message ends mosquitto_pub with an error; what
			// the server did is checked below, not its exit status.
			if err != nil {
				t.Logf("mosquitto_pub %s: %v %s", topic, err, out)
			}
		}
	} else {
		t.Log("mosquitto_pub not installed: publishing with paho, one connection per message")
	}
	for _, v := range vectors(t, "uplink.json") {
		if strings.HasPrefix(v.Topic, "v1/gateway/rpc") || strings.Contains(v.Topic, "attributes/request") {
			continue // answers to the server's requests, and requests: TestRunServesTheVectors
		}
		n := len(srv.Messages())
		publish(v.Topic, v.Payload)
		msgs := srv.Messages()
		require.Greater(t, len(msgs), n, "vector %s reached the server", v.Name)
		assert.Equal(t, v.Topic, msgs[len(msgs)-1].Topic)
		assert.Empty(t, srv.Rejections(), "vector %s was accepted", v.Name)
	}
	for _, v := range vectors(t, "never-send.json") {
		if v.Name != "attribute-request-doc-array-form" {
			continue
		}
		publish(v.Topic, v.Payload)
		rs := srv.Rejections()
		require.Len(t, rs, 1, "the documented request form is refused")
		assert.True(t, rs[0].Closed, "and closes the connection")
	}
}

// With a provisioning profile, a device provisions itself over the
// "provision" session, and a gateway provisioned so connects with the
// token it was given.
func TestRunProvisioning(t *testing.T) {
	var out bytes.Buffer
	require.ErrorContains(t, run(context.Background(), []string{"-addr", "127.0.0.1:0", "-provision-key", "k"}, &out, nil), "go together")

	srv, _ := start(t, "-addr", "127.0.0.1:0", "-provision-key", "k", "-provision-secret", "s")
	o := paho.NewClientOptions().AddBroker(srv.URL()).SetUsername("provision").SetClientID("prov").SetAutoReconnect(false)
	c := paho.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(waitTimeout))
	require.NoError(t, tok.Error())
	defer c.Disconnect(0)
	reply := make(chan []byte, 1)
	sub := c.Subscribe("/provision/response", 1, func(_ paho.Client, m paho.Message) { reply <- m.Payload() })
	require.True(t, sub.WaitTimeout(waitTimeout))
	require.NoError(t, sub.Error())
	pub := c.Publish("/provision/request", 1, false,
		`{"deviceName":"New Gateway","provisionDeviceKey":"k","provisionDeviceSecret":"s","credentialsType":"ACCESS_TOKEN","token":"new-token","gateway":true}`)
	require.True(t, pub.WaitTimeout(waitTimeout))
	var r struct {
		Status, CredentialsType, CredentialsValue string
	}
	select {
	case b := <-reply:
		require.NoError(t, json.Unmarshal(b, &r))
	case <-time.After(waitTimeout):
		t.Fatal("no provision reply")
	}
	assert.Equal(t, "SUCCESS", r.Status)
	assert.Equal(t, "ACCESS_TOKEN", r.CredentialsType)
	assert.Equal(t, "new-token", r.CredentialsValue)

	gw := dial(t, srv.URL(), "new-token")
	gw.pub("v1/gateway/telemetry", `{"Behind":[{"ts":1,"values":{"t":1}}]}`)
	assert.Equal(t, 1, srv.TelemetryCount("Behind"), "the provisioned gateway works")
}
