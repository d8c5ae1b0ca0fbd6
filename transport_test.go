package tbgateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// Transports: TLS (verified by default, never falling back to plain
// text), X.509 client certificates, websockets.

func TestTLSWithPrivateCA(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithTLS())
	require.Contains(t, srv.URL(), "ssl://")
	ctx := ctxT(t)

	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithRootCAs(srv.TLSConfig().RootCAs))
	require.NoError(t, err)
	require.NoError(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	require.NoError(t, g.Close(ctx))

	// Verification is on by default: without trusting the CA the
	// handshake fails, and there is no fallback to plain text.
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = tb.Dial(short, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithConnectTimeout(time.Second))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "certificate")
	assert.Equal(t, 1, srv.TelemetryCount("A"))
}

// TestTLSVerifiedByDefaultNoPlaintextFallback: a server certificate that is
// not trusted fails the dial, and nothing falls back to plain MQTT.
func TestTLSVerifiedByDefaultNoPlaintextFallback(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithTLS())
	require.True(t, strings.HasPrefix(srv.URL(), "ssl://"), srv.URL())
	logger, logs := debugLogger()
	ctx := ctxFor(t, 8*time.Second)
	dial := func(url string, opts ...tb.Option) error {
		opts = append([]tb.Option{tb.WithAccessToken(tbtest.DefaultToken), tb.WithLogger(logger),
			tb.WithConnectTimeout(2 * time.Second)}, opts...)
		g, err := tb.Dial(ctx, url, opts...)
		if err == nil {
			_ = g.Close(ctx)
		}
		return err
	}
	isCertError := func(err error) bool {
		var cv *tls.CertificateVerificationError
		var ua x509.UnknownAuthorityError
		return errors.As(err, &cv) || errors.As(err, &ua)
	}

	err := dial(srv.URL())
	require.Error(t, err, "an untrusted server certificate must fail the dial")
	assert.True(t, isCertError(err), "want a certificate verification error, got %v", err)

	// A TLS configuration without trust anchors changes nothing: the
	// system roots do not know the server's CA either.
	err = dial(srv.URL(), tb.WithTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	require.Error(t, err)
	assert.True(t, isCertError(err), "want a certificate verification error, got %v", err)

	// Trusting another CA does not help.
	err = dial(srv.URL(), tb.WithRootCAs(x509.NewCertPool()))
	require.Error(t, err)
	assert.True(t, isCertError(err), "want a certificate verification error, got %v", err)

	// Other TLS schemes are verified the same way.
	addr := strings.TrimPrefix(srv.URL(), "ssl://")
	for _, scheme := range []string{"tls", "mqtts"} {
		err = dial(scheme + "://" + addr)
		require.Error(t, err, scheme)
		assert.True(t, isCertError(err), "%s: want a certificate verification error, got %v", scheme, err)
	}

	// Plain MQTT to the same host and port: the TLS listener does not
	// speak it, so the dial fails instead of sending credentials in clear.
	err = dial("tcp://" + addr)
	require.Error(t, err, "plain MQTT against a TLS listener must fail")

	assert.Empty(t, srv.Messages(), "the server received a publish without a verified TLS session")
	assert.Empty(t, srv.Rejections(), "a CONNECT reached the server without a verified TLS session")
	gw, ok := srv.Device(srv.GatewayName(tbtest.DefaultToken))
	require.True(t, ok)
	assert.False(t, gw.Connected)
	assert.NotContains(t, logs.String(), `"msg":"tbgateway: connected"`)

	// Control: trusting the server's CA works, so the failures above come
	// from verification and not from a broken server.
	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithLogger(logger),
		tb.WithRootCAs(srv.TLSConfig().RootCAs))
	require.NoError(t, err)
	require.NoError(t, g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	require.NoError(t, g.Close(ctx))
	assert.NotEmpty(t, srv.Messages())
}

// testPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA.
func testPKI(t *testing.T) (ca *x509.CertPool, server, client tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	ca = x509.NewCertPool()
	ca.AddCert(caCert)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ip bool) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if ip {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	return ca, leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, true), leaf(3, "gateway-device", x509.ExtKeyUsageClientAuth, false)
}

func startMochi(t *testing.T, l listeners.Listener) {
	t.Helper()
	s := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, s.AddHook(new(auth.AllowHook), nil))
	require.NoError(t, s.AddListener(l))
	require.NoError(t, s.Serve())
	t.Cleanup(func() { _ = s.Close() })
}

// TestX509ClientCertificate authenticates with a client certificate, as
// ThingsBoard's X.509 device credentials do; a server that requires one
// refuses a gateway without it.
func TestX509ClientCertificate(t *testing.T) {
	ca, serverCert, clientCert := testPKI(t)
	l := listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientCAs: ca, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	}})
	startMochi(t, l)
	url := "ssl://" + l.Address()
	ctx := ctxT(t)

	g, err := tb.Dial(ctx, url, tb.WithRootCAs(ca), tb.WithClientCertificate(clientCert))
	require.NoError(t, err)
	require.NoError(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	require.NoError(t, g.Close(ctx))

	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = tb.Dial(short, url, tb.WithRootCAs(ca), tb.WithConnectTimeout(time.Second))
	require.Error(t, err)
}

func TestWebsocket(t *testing.T) {
	// mochi's websocket listener binds only when serving: reserve a port.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := probe.Addr().String()
	require.NoError(t, probe.Close())
	l := listeners.NewWebsocket(listeners.Config{ID: "ws", Address: addr})
	startMochi(t, l)
	ctx := ctxT(t)
	var g *tb.Gateway
	require.Eventually(t, func() bool {
		g, err = tb.Dial(ctx, "ws://"+addr+"/mqtt", tb.WithAccessToken("t"))
		return err == nil
	}, wait, 20*time.Millisecond)
	require.NoError(t, err)
	require.NoError(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	require.NoError(t, g.Close(ctx))
}
