package tbgateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// provisionServer is a TLS tbtest with a create-new profile ("create")
// and a check-pre-provisioned one ("check") holding the gateway "Pre GW".
func provisionServer(t *testing.T) *tbtest.Server {
	return tbtest.NewServer(t, tbtest.WithTLS(), tbtest.WithProvisionCloseDelay(100*time.Millisecond),
		tbtest.WithProvisioning(
			tbtest.ProvisionProfile{Name: "sensors", Key: "create-key", Secret: "create-secret"},
			tbtest.ProvisionProfile{Name: "gateways", Key: "check-key", Secret: "check-secret",
				Strategy:       tbtest.CheckPreProvisionedDevices,
				PreProvisioned: []tbtest.PreProvisionedDevice{{Name: "Pre GW", AccessToken: "pre-gw-token", Gateway: true}}},
		))
}

func selfSigned(t *testing.T) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestProvision provisions over TLS, verification on, with each
// credentials type and both profile strategies; the access-token
// gateway's credentials dial straight away.
func TestProvision(t *testing.T) {
	srv := provisionServer(t)
	ctx := ctxT(t)
	tlsOpt := tb.WithTLSConfig(srv.TLSConfig())

	t.Run("access token, a gateway", func(t *testing.T) {
		c, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret",
			DeviceName: "New GW", Gateway: true}, tlsOpt)
		require.NoError(t, err)
		assert.Equal(t, tb.CredentialsAccessToken, c.Type)
		require.NotEmpty(t, c.AccessToken, "the server chose a token")
		g, err := tb.Dial(ctx, srv.URL(), append(c.Options(), tlsOpt)...)
		require.NoError(t, err, "the credentials plug into Dial")
		require.NoError(t, g.Device("Behind").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
		require.NoError(t, g.Close(ctx))
		assert.Equal(t, 1, srv.TelemetryCount("Behind"))
		p := srv.Provisioned()
		require.NotEmpty(t, p)
		assert.Equal(t, tbtest.ProvisionedDevice{Name: "New GW", Profile: "sensors", CredentialsType: tbtest.CredentialsAccessToken,
			Token: c.AccessToken, Gateway: true, Time: p[0].Time}, p[0])
	})
	t.Run("access token chosen by the device", func(t *testing.T) {
		c, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret",
			DeviceName: "Own token", Token: "my-token"}, tlsOpt)
		require.NoError(t, err)
		assert.Equal(t, "my-token", c.AccessToken)
	})
	t.Run("MQTT basic", func(t *testing.T) {
		c, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret",
			DeviceName: "Basic", Type: tb.CredentialsMQTTBasic, ClientID: "cid", Username: "user", Password: "pw"}, tlsOpt)
		require.NoError(t, err)
		assert.Equal(t, &tb.Credentials{Type: tb.CredentialsMQTTBasic, ClientID: "cid", Username: "user", Password: "pw"}, c)
		assert.Len(t, c.Options(), 1)
	})
	t.Run("X.509", func(t *testing.T) {
		cert := selfSigned(t)
		c, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret",
			DeviceName: "Cert", Type: tb.CredentialsX509, Certificate: cert}, tlsOpt)
		require.NoError(t, err)
		assert.Equal(t, tb.CredentialsX509, c.Type)
		block, _ := pem.Decode([]byte(c.CertificatePEM))
		require.NotNil(t, block, "the stored certificate comes back as PEM")
		assert.Equal(t, cert.Certificate[0], block.Bytes)
		assert.Len(t, c.Options(), 1, "the client certificate, key included")
	})
	t.Run("pre-provisioned gateway", func(t *testing.T) {
		c, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "check-key", Secret: "check-secret",
			DeviceName: "Pre GW", Gateway: true}, tlsOpt)
		require.NoError(t, err)
		assert.Equal(t, "pre-gw-token", c.AccessToken)
		g, err := tb.Dial(ctx, srv.URL(), append(c.Options(), tlsOpt)...)
		require.NoError(t, err)
		require.NoError(t, g.Close(ctx))
	})
}

// TestProvisionErrors: each refusal of the server is a typed error, and
// bad requests fail before anything is sent.
func TestProvisionErrors(t *testing.T) {
	srv := provisionServer(t)
	ctx := ctxT(t)
	tlsOpt := tb.WithTLSConfig(srv.TLSConfig())
	var pe *tb.ProvisionError

	_, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "wrong"}, tlsOpt)
	require.ErrorIs(t, err, tb.ErrProvisionNotFound)
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "Provision data was not found!", pe.Message)

	_, err = tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "check-key", Secret: "check-secret", DeviceName: "Unknown"}, tlsOpt)
	require.ErrorIs(t, err, tb.ErrProvisionFailed, "not pre-provisioned")

	_, err = tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret", DeviceName: "Twice"}, tlsOpt)
	require.NoError(t, err)
	_, err = tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret", DeviceName: "Twice"}, tlsOpt)
	require.ErrorIs(t, err, tb.ErrProvisionFailed, "exists already")
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "FAILURE", pe.Status)

	before := len(srv.Provisioned())
	for _, r := range []tb.ProvisionRequest{
		{Secret: "s"}, {Key: "k"},
		{Key: "k", Secret: "s", Type: tb.CredentialsMQTTBasic},
		{Key: "k", Secret: "s", Type: tb.CredentialsX509},
		{Key: "k", Secret: "s", Type: "KERBEROS"},
	} {
		_, err := tb.Provision(ctx, srv.URL(), r, tlsOpt)
		assert.ErrorIs(t, err, tb.ErrInvalidValue, "%+v", r)
	}
	assert.Len(t, srv.Provisioned(), before)

	// Verification is on: a server whose certificate is not trusted is refused.
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = tb.Provision(short, srv.URL(), tb.ProvisionRequest{Key: "create-key", Secret: "create-secret", DeviceName: "Untrusted"})
	require.Error(t, err)
	assert.Len(t, srv.Provisioned(), before)
}

func ExampleProvision() {
	srv := tbtest.NewServer(nil, tbtest.WithProvisioning(tbtest.ProvisionProfile{Name: "gateways", Key: "key", Secret: "secret"}))
	defer srv.Close()
	ctx := context.Background()

	creds, err := tb.Provision(ctx, srv.URL(), tb.ProvisionRequest{Key: "key", Secret: "secret",
		DeviceName: "Gateway 12", Gateway: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(creds.Type)
	gw, err := tb.Dial(ctx, srv.URL(), creds.Options()...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer gw.Close(ctx)
	fmt.Println(gw.State())
	// Output:
	// ACCESS_TOKEN
	// up
}
