<#
.SYNOPSIS
Shows the current QuotaGate connection.

.DESCRIPTION
Returns the session's default client as Connect-QgDefender set it up, or the given
client: its tenant, app (client) id, cloud, base URL and authority (empty when they are
the cloud's), the store that shares its quotas, how it signs in, and the buckets it has
used with the use of each window. Returns nothing when the session is not connected.
Secrets and tokens are never shown.

.PARAMETER Client
The client to show. Default: the session's default client.

.EXAMPLE
Get-QgContext

.EXAMPLE
(Get-QgContext).Buckets | Format-Table

.OUTPUTS
QuotaGate.Context
#>
function Get-QgContext {
    [CmdletBinding()]
    [OutputType('QuotaGate.Context')]
    param(
        [Parameter(ValueFromPipeline)]
        [QuotaGate.Interop.Client]$Client
    )
    process {
        $target = if ($Client) { $Client } else { $script:DefaultClient }
        if (-not $target) {
            Write-QgLog
            return
        }
        try {
            $stats = ConvertTo-QgStatistics (ConvertFrom-QgJson $target.StatisticsJson() -AsHashtable)
        } catch {
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $target))
        }
        # One object per bucket, with the fields the library reports for it.
        $buckets = foreach ($key in $stats.Buckets.Keys) {
            $bucket = [pscustomobject]@{ PSTypeName = 'QuotaGate.BucketUse'; Key = $key }
            foreach ($field in $stats.Buckets[$key].PSObject.Properties) {
                $bucket | Add-Member -NotePropertyName $field.Name -NotePropertyValue $field.Value
            }
            $bucket
        }
        Write-QgLog
        [pscustomobject]@{
            PSTypeName = 'QuotaGate.Context'
            TenantId   = $target.TenantId
            ClientId   = $target.ClientId
            Cloud      = $target.Cloud
            BaseUrl    = $target.BaseUrl
            Authority  = $target.Authority
            Store      = $target.Store
            AuthMethod = $target.AuthMethod
            Buckets    = @($buckets)
        }
    }
}
