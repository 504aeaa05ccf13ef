<#
.SYNOPSIS
Closes a QuotaGate client.

.DESCRIPTION
Closes the given client, or the session's default client, and releases it. Waits and
calls in progress on it end with a "closed" error. Disconnecting the default client
leaves the session without one until the next Connect-QgDefender.

.PARAMETER Client
The client to close. Default: the session's default client.

.EXAMPLE
Disconnect-QgDefender

.EXAMPLE
$c = Connect-QgDefender -AccessToken $token; Disconnect-QgDefender -Client $c

.OUTPUTS
None
#>
function Disconnect-QgDefender {
    [CmdletBinding()]
    [OutputType([void])]
    param(
        [Parameter(ValueFromPipeline)]
        [QuotaGate.Interop.Client]$Client
    )
    process {
        $target = if ($Client) { $Client } else { $script:DefaultClient }
        if (-not $target) {
            Write-Verbose 'No client to disconnect.'
            return
        }
        try {
            if (-not $target.Handle.IsClosed) {
                $target.Close()
            }
        } catch {
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $target))
        } finally {
            $target.Dispose()
            if ([object]::ReferenceEquals($target, $script:DefaultClient)) {
                $script:DefaultClient = $null
            }
            Write-QgLog
        }
    }
}
