package tbtest

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestProvisionBadOptions(t *testing.T) {
	_, err := newServer(WithProvisioning(ProvisionProfile{Key: "k", Secret: "s", Strategy: "NOPE"}))
	assert.ErrorContains(t, err, "unknown provision strategy")
	_, err = newServer(WithProvisioning(ProvisionProfile{Key: "k"}, ProvisionProfile{Key: "k"}))
	assert.ErrorContains(t, err, "two provision profiles")
	s, err := newServer(WithProvisioning(ProvisionProfile{Key: "k", Secret: "s"}))
	assert.NoError(t, err)
	assert.Equal(t, DefaultProvisionCloseDelay, s.cfg.provisionClose)
	assert.Equal(t, AllowCreateNewDevices, s.provProfiles["k"].Strategy)
}
