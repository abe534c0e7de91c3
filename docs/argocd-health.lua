-- Argo CD health of the PubSubKafka kinds: KafkaTopic, OrderConsumer, OrderGateway and
-- DLQPolicy. One script for all: README.md shows it in argocd-cm under
-- resource.customizations.health.pubsubkafka.io_<Kind>, and tests/tests/node.rs runs this
-- very file against real status objects.
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function say(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

-- A DLQPolicy is configuration: the OrderConsumers that use it report what it does.
if obj.kind == "DLQPolicy" then
  hs.status = "Healthy"
  hs.message = "a retry and dead-letter policy"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report"
  return hs
end
if obj.metadata.generation ~= nil and
    (status.observedGeneration == nil or status.observedGeneration < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "the operator has not reconciled generation " .. obj.metadata.generation .. " yet"
  return hs
end

local ready = condition(status.conditions, "Ready")
local reconciled = condition(status.conditions, "Reconciled")
local degraded = condition(status.conditions, "Degraded")

-- Waiting on another resource is progress, not failure.
local waiting = { TopicNotReady = true, PolicyNotFound = true }

if reconciled ~= nil and reconciled.status == "False" then
  if waiting[reconciled.reason] then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = say(reconciled)
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
if ready ~= nil and reconciled == nil and not waiting[ready.reason] then
  -- A kind without Reconciled (an operator older than the condition): Ready says it all.
  hs.status = "Degraded"
  hs.message = say(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = say(ready)
else
  hs.message = "waiting for the Ready condition"
end
return hs
